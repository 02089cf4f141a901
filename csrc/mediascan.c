/* Media messages in their plain shape; see mediascan.h. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "mediascan.h"

enum { NOT_MEDIA = 2, MAX_DIGITS = 18 };
enum { EVENT = 1, PERSPECTIVE = 2, SEQUENCE = 4, MEDIA = 8, ALL = 15 };

/* A base64 digit's value; 128 for every other byte ('=' included: padding is placed by
 * position). */
static const uint8_t B64[256] = {
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,  62, 128, 128, 128,  63,
     52,  53,  54,  55,  56,  57,  58,  59,  60,  61, 128, 128, 128, 128, 128, 128,
    128,   0,   1,   2,   3,   4,   5,   6,   7,   8,   9,  10,  11,  12,  13,  14,
     15,  16,  17,  18,  19,  20,  21,  22,  23,  24,  25, 128, 128, 128, 128, 128,
    128,  26,  27,  28,  29,  30,  31,  32,  33,  34,  35,  36,  37,  38,  39,  40,
     41,  42,  43,  44,  45,  46,  47,  48,  49,  50,  51, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
    128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128,
};

typedef struct {
    const uint8_t *p, *end;
} cursor;

static void skip_space(cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

/* A JSON string: its raw contents (up to the first quote) in [*s, *s + *n).  Escapes are not
 * decoded and need no check: every value taken is compared with a plain word or checked byte
 * by byte (digits, base64), and a backslash, control or non-ASCII byte fails those. */
static int string(cursor *c, const uint8_t **s, size_t *n)
{
    if (c->p >= c->end || *c->p != '"')
        return 0;
    const uint8_t *start = ++c->p;
    const uint8_t *q = memchr(start, '"', (size_t)(c->end - start));
    if (q == NULL)
        return 0;
    *s = start;
    *n = (size_t)(q - start);
    c->p = q + 1;
    return 1;
}

static int equals(const uint8_t *s, size_t n, const char *word)
{
    size_t len = strlen(word);
    return n == len && memcmp(s, word, len) == 0;
}

/* CS_G711_NO_SIMD builds only the scalar path (as in mulaw.c). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(CS_G711_NO_SIMD)
#include <immintrin.h>
#define CS_AVX2 __attribute__((target("avx2")))

/* The leading blocks of 32 base64 digits of s[0:n] decoded into o, 24 bytes a block, while at
 * least 12 digits follow the block (each block stores 32 bytes, and the 8 beyond its 24 are
 * overwritten by what follows).  Stops before a block with any byte that is not a base64 digit
 * ('=' included) and leaves it to the scalar loop.  Returns the digits decoded (a multiple of
 * 32).  Muła and Lemire's method ("Faster Base64 Encoding and Decoding Using AVX2
 * Instructions", 2018), as aklomp/base64 implements it: two nibble lookups validate 32 digits
 * at once, a third gives the offset that maps each digit to its 6-bit value, and two
 * multiply-adds and two shuffles pack the values. */
static CS_AVX2 size_t base64_avx2(const uint8_t *s, size_t n, uint8_t *o)
{
#define CS_LANES(...) _mm256_setr_epi8(__VA_ARGS__, __VA_ARGS__)
    const __m256i lut_lo = CS_LANES(0x15, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
                                    0x11, 0x11, 0x13, 0x1A, 0x1B, 0x1B, 0x1B, 0x1A);
    const __m256i lut_hi = CS_LANES(0x10, 0x10, 0x01, 0x02, 0x04, 0x08, 0x04, 0x08,
                                    0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10);
    const __m256i lut_roll = CS_LANES(0, 16, 19, 4, -65, -65, -71, -71, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m256i pack = CS_LANES(2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1);
#undef CS_LANES
    const __m256i mask_2f = _mm256_set1_epi8(0x2F);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 4, 5, 6, -1, -1);
    size_t done = 0;
    while (n - done >= 32 + 12) {
        __m256i str = _mm256_loadu_si256((const __m256i *)(const void *)(s + done));
        const __m256i hi_nibbles = _mm256_and_si256(_mm256_srli_epi32(str, 4), mask_2f);
        const __m256i lo_nibbles = _mm256_and_si256(str, mask_2f);
        const __m256i hi = _mm256_shuffle_epi8(lut_hi, hi_nibbles);
        const __m256i lo = _mm256_shuffle_epi8(lut_lo, lo_nibbles);
        if (!_mm256_testz_si256(lo, hi))
            break;  /* not a base64 digit in the block */
        const __m256i eq_2f = _mm256_cmpeq_epi8(str, mask_2f);
        const __m256i roll = _mm256_shuffle_epi8(lut_roll, _mm256_add_epi8(eq_2f, hi_nibbles));
        str = _mm256_add_epi8(str, roll);  /* each byte its digit's 6-bit value */
        str = _mm256_maddubs_epi16(str, _mm256_set1_epi32(0x01400140));
        str = _mm256_madd_epi16(str, _mm256_set1_epi32(0x00011000));
        str = _mm256_shuffle_epi8(str, pack);
        str = _mm256_permutevar8x32_epi32(str, lanes);
        _mm256_storeu_si256((__m256i *)(void *)(o + done / 4 * 3), str);
        done += 32;
    }
    return done;
}

static size_t base64_fast(const uint8_t *s, size_t n, uint8_t *o)
{
    return __builtin_cpu_supports("avx2") ? base64_avx2(s, n, o) : 0;  /* a load and a test */
}
#else
static size_t base64_fast(const uint8_t *s, size_t n, uint8_t *o)
{
    (void)s;
    (void)n;
    (void)o;
    return 0;
}
#endif

/* Strict padded base64 (as binascii.a2b_base64(strict_mode=True) on a length that is a
 * multiple of 4 and does not end in "==="): returns the decoded length, or -1. */
static long base64(const uint8_t *s, size_t n, uint8_t *out, int vectors)
{
    if (n == 0 || n % 4)
        return -1;
    size_t pad = s[n - 1] == '=' ? (s[n - 2] == '=' ? 2 : 1) : 0;
    size_t full = (n - (pad ? 4 : 0)) / 4;
    /* a Media payload is 216 digits: all but the last 24 in vectors where the CPU has them */
    size_t fast = vectors ? base64_fast(s, 4 * full, out) : 0;
    uint8_t *o = out + fast / 4 * 3;
    s += fast;
    for (size_t i = fast / 4; i < full; i++, s += 4) {
        unsigned a = B64[s[0]], b = B64[s[1]], c = B64[s[2]], d = B64[s[3]];
        if ((a | b | c | d) & 0x80)
            return -1;
        *o++ = (uint8_t)(a << 2 | b >> 4);
        *o++ = (uint8_t)(b << 4 | c >> 2);
        *o++ = (uint8_t)(c << 6 | d);
    }
    if (pad) {
        unsigned a = B64[s[0]], b = B64[s[1]], c = pad == 2 ? 0 : B64[s[2]];
        if ((a | b | c) & 0x80)
            return -1;
        *o++ = (uint8_t)(a << 2 | b >> 4);
        if (pad == 1)
            *o++ = (uint8_t)(b << 4 | c >> 2);
    }
    return (long)(o - out);
}

/* One message; on success fills the outputs and returns the payload length, else -1. */
static long scan_one(const uint8_t *msg, size_t size, size_t max_payload, uint8_t *out,
                     uint32_t *perspective, int64_t *sequence, int vectors)
{
    cursor c = {msg, msg + size};
    const uint8_t *media = NULL;
    size_t media_len = 0;
    unsigned seen = 0;
    skip_space(&c);
    if (c.p >= c.end || *c.p++ != '{')
        return -1;
    for (;;) {
        const uint8_t *key, *value;
        size_t key_len, value_len;
        unsigned member;
        skip_space(&c);
        if (!string(&c, &key, &key_len))
            return -1;
        skip_space(&c);
        if (c.p >= c.end || *c.p++ != ':')
            return -1;
        skip_space(&c);
        if (!string(&c, &value, &value_len))
            return -1;
        if (equals(key, key_len, "event")) {
            if (!equals(value, value_len, "Media"))
                return -1;
            member = EVENT;
        } else if (equals(key, key_len, "perspective")) {
            if (equals(value, value_len, "Participant"))
                *perspective = 0;
            else if (equals(value, value_len, "Conference"))
                *perspective = 1;
            else
                return -1;
            member = PERSPECTIVE;
        } else if (equals(key, key_len, "sequenceId")) {
            if (value_len == 0 || value_len > MAX_DIGITS)
                return -1;
            int64_t number = 0;
            for (size_t i = 0; i < value_len; i++) {
                if (value[i] < '0' || value[i] > '9')
                    return -1;
                number = number * 10 + (value[i] - '0');
            }
            *sequence = number;
            member = SEQUENCE;
        } else if (equals(key, key_len, "media")) {
            /* decoded last, once the message is known to be in the plain shape */
            if (value_len == 0 || value_len / 4 * 3 > max_payload + 2)
                return -1;
            media = value;
            media_len = value_len;
            member = MEDIA;
        } else {
            return -1;
        }
        if (seen & member)
            return -1;  /* repeated: the general parser decides (the last counts, as here, but
                           there is no need to rely on that) */
        seen |= member;
        skip_space(&c);
        if (c.p >= c.end)
            return -1;
        if (*c.p == ',') {
            c.p++;
            continue;
        }
        if (*c.p++ != '}')
            return -1;
        break;
    }
    skip_space(&c);
    if (c.p != c.end || seen != ALL)
        return -1;
    long length = base64(media, media_len, out, vectors);
    if (length <= 0 || (size_t)length > max_payload)
        return -1;
    return length;
}

size_t cs_media_scan(const uint8_t *buf, const uint32_t *spans, size_t count, size_t max_bytes,
                     size_t max_payload, uint8_t *out, uint32_t *media, int64_t *seqs,
                     size_t *written, int vectors)
{
    size_t position = 0, recognised = 0;
    for (size_t i = 0; i < count; i++) {
        size_t size = spans[2 * i + 1];
        long length = -1;
        uint32_t perspective = NOT_MEDIA;
        if (size <= max_bytes)
            length = scan_one(buf + spans[2 * i], size, max_payload, out + position, &perspective,
                              &seqs[i], vectors);
        if (length < 0) {
            media[3 * i] = NOT_MEDIA;
            continue;
        }
        media[3 * i] = perspective;
        media[3 * i + 1] = (uint32_t)position;
        media[3 * i + 2] = (uint32_t)length;
        position += (size_t)length;
        recognised++;
    }
    *written = position;
    return recognised;
}
