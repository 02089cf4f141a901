/* The steady state of an in-order stream; see inorder.h and timeline.py. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "inorder.h"

/* n bytes from src into a circular pool of cap bytes at `at`. */
static void pool_write(uint8_t *pool, uint32_t cap, uint32_t at, const uint8_t *src, uint32_t n)
{
    uint32_t first = cap - at < n ? cap - at : n;
    memcpy(pool + at, src, first);
    memcpy(pool, src + first, n - first);
}

static uint32_t advance(uint32_t at, uint32_t n, uint32_t cap)
{
    at += n;  /* n <= cap and at < cap: no overflow for pools under 2 GiB */
    return at >= cap ? at - cap : at;
}

static void report_on(const cs_lane *lanes, const uint32_t *tails, const size_t *released,
                      int64_t *report)
{
    for (int k = 0; k < 2; k++) {
        const cs_lane *side = &lanes[k];
        int64_t *r = report + 8 * k;
        r[0] = side->next;
        r[1] = side->received;
        r[2] = side->placed;
        r[3] = side->committed;
        r[4] = side->held_bytes;
        r[5] = side->ring_bytes;
        r[6] = tails[k];
        r[7] = (int64_t)released[k];
    }
}

size_t cs_inorder_place(cs_lane *lanes, const char *media_bytes, const char *seqs_bytes,
                        const char *payload_bytes, size_t start, size_t count, int64_t hold_limit,
                        int64_t ring_limit, size_t acc0, size_t acc1, size_t block, int64_t *report)
{
    /* the scan's arrays, kept as bytes objects (whose contents CPython aligns to 8 bytes) */
    const uint32_t *media = (const uint32_t *)(const void *)media_bytes;
    const int64_t *seqs = (const int64_t *)(const void *)seqs_bytes;
    const uint8_t *payloads = (const uint8_t *)payload_bytes;
    size_t released[2] = {0, 0};
    uint32_t tails[2];  /* where each side's released audio starts in its ring pool */
    for (int k = 0; k < 2; k++)
        tails[k] = advance(lanes[k].ring_start, (uint32_t)lanes[k].ring_bytes, lanes[k].ring_cap);
    size_t i;
    for (i = start; i < count; i++) {
        uint32_t p = media[3 * i];
        if (p > 1)
            break;  /* not a Media message */
        cs_lane *side = &lanes[p], *other = &lanes[1 - p];
        if (seqs[i] != side->next + side->window)
            break;  /* not the next frame: reordering, a gap, a duplicate, a late frame ... */
        uint32_t arriving = media[3 * i + 2];
        uint32_t first = side->held_len[side->held_head];  /* the frame released */
        uint32_t slot = (uint32_t)(side->next % side->ring_size);
        int32_t old = side->ring_len[slot];
        uint32_t dropped = old > 0 ? (uint32_t)old : 0;
        int64_t held_bytes = side->held_bytes + arriving - first;
        int64_t ring_bytes = side->ring_bytes - dropped + first;
        int64_t committed = side->committed + first;
        /* (a release only moves this side forward: it can come to lead, never to lag) */
        if (held_bytes > hold_limit || ring_bytes > ring_limit
            || committed - other->committed > other->force_limit
            || released[p] + first > side->ring_cap)
            break;  /* shedding, eviction, forcing: timeline.py's business (or the call's end) */
        /* the ring: the slot's old payload is the FIFO's head, the released one joins its tail */
        side->ring_start = advance(side->ring_start, dropped, side->ring_cap);
        uint32_t tail = advance(side->ring_start, (uint32_t)(side->ring_bytes - dropped), side->ring_cap);
        uint32_t room = side->held_cap - side->held_start;  /* the frame may wrap around */
        if (first <= room) {
            pool_write(side->ring_pool, side->ring_cap, tail, side->held_pool + side->held_start, first);
        } else {
            pool_write(side->ring_pool, side->ring_cap, tail, side->held_pool + side->held_start, room);
            pool_write(side->ring_pool, side->ring_cap, advance(tail, room, side->ring_cap),
                       side->held_pool, first - room);
        }
        side->ring_seq[slot] = side->next;
        side->ring_len[slot] = (int32_t)first;
        side->ring_bytes = ring_bytes;
        released[p] += first;
        /* the held FIFO: the released frame leaves its head, the arriving one joins its tail */
        side->held_start = advance(side->held_start, first, side->held_cap);
        pool_write(side->held_pool, side->held_cap,
                   advance(side->held_start, (uint32_t)(side->held_bytes - first), side->held_cap),
                   payloads + media[3 * i + 1], arriving);
        side->held_len[side->held_head] = arriving;
        side->held_head = side->held_head + 1 == side->window ? 0 : side->held_head + 1;
        side->held_bytes = held_bytes;
        side->received++;
        side->placed++;
        side->committed = committed;
        side->next++;
        if (acc0 + released[0] >= block && acc1 + released[1] >= block) {
            i++;
            break;
        }
    }
    report_on(lanes, tails, released, report);
    return i;
}
