/* WebSocket frame splitting; see wsframe.h. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "wsframe.h"

size_t cs_ws_split(const uint8_t *data, size_t size, uint64_t max_payload, uint8_t *out,
                   uint32_t *spans, uint32_t *frames, size_t max_frames, size_t *report)
{
    size_t pos = 0, written = 0, count = 0, plain = 1;
    while (count < max_frames && size - pos >= 2) {
        uint8_t first = data[pos], second = data[pos + 1];
        if ((first != 0x81 && first != 0x82) || !(second & 0x80))
            break;
        uint64_t length = second & 0x7F;
        size_t header = 2;
        if (length == 126) {
            if (size - pos < 4)
                break;
            length = ((uint64_t)data[pos + 2] << 8) | data[pos + 3];
            header = 4;
        } else if (length == 127) {
            if (size - pos < 10)
                break;
            length = 0;
            for (int i = 0; i < 8; i++)
                length = (length << 8) | data[pos + 2 + i];
            header = 10;
        }
        if (length > max_payload || length > UINT32_MAX)
            break;
        if (size - pos < header + 4 || size - pos - header - 4 < length)
            break;  /* cut by the end of the chunk */
        const uint8_t *mask = data + pos + header;
        const uint8_t *payload = mask + 4;
        uint8_t *dst = out + written;
        /* eight bytes at a time (a byte at a time cost ~1 ns per byte, a third of a Media
         * message's way through the event loop); the mask repeats every four bytes */
        uint32_t key;
        uint64_t word, key8, high = 0;
        memcpy(&key, mask, 4);
        key8 = (uint64_t)key << 32 | key;
        size_t i = 0;
        for (; i + 8 <= (size_t)length; i += 8) {
            memcpy(&word, payload + i, 8);
            word ^= key8;
            high |= word;
            memcpy(dst + i, &word, 8);
        }
        for (; i < (size_t)length; i++) {
            dst[i] = payload[i] ^ mask[i & 3];
            high |= dst[i];
        }
        if (first != 0x81 || (high & 0x8080808080808080u))
            plain = 0;
        spans[2 * count] = (uint32_t)written;
        spans[2 * count + 1] = (uint32_t)length;
        frames[2 * count] = first & 0x0F;
        frames[2 * count + 1] = (uint32_t)pos;
        written += (size_t)length;
        pos += header + 4 + (size_t)length;
        count++;
    }
    report[0] = pos;
    report[1] = plain;
    return count;
}
