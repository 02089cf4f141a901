/* The steady state of a call's in-order stream, placed in C (see timeline.py, "Steady state").
 *
 * In a healthy call both perspectives arrive in order, and placing a frame is always the same:
 * the frame is held, and the frame one window older is released -- appended to the side's
 * audio and remembered in the replay ring.  Python did that in ~2.3 us per frame; here a whole
 * scanned batch (mediascan.h) is placed in one call, from the scan's own arrays, and stops at
 * the first frame that is anything else, which timeline.py then places as it always did.
 *
 * A cs_lane mirrors one `_Side` of timeline.py while that side is in its steady state: it holds
 * exactly the `window` numbers next .. next + window - 1, in order.  Its buffers are owned by
 * the caller.  The held payloads are a FIFO in `held_pool` (circular, `held_cap` bytes, the
 * lowest frame's bytes at `held_start`, their lengths in `held_len` from index `held_head`);
 * the replay ring's payloads are a FIFO in `ring_pool` (circular, `ring_cap` bytes) in slot order
 * from slot next % ring_size (whose payload starts at `ring_start`): slot next % ring_size is
 * always the next one overwritten, so dropping its payload frees the FIFO's head.
 * `ring_len[k]` is -1 for no payload (Python's None), `ring_seq[k]` CS_NO_SEQUENCE for None.
 *
 * This header is also the cffi cdef (csrc/build_mulaw.py reads it verbatim): declarations only.
 * Include <stddef.h> and <stdint.h> before it.
 */

#define CS_NO_SEQUENCE -9223372036854775807

typedef struct {
    int64_t next;            /* the next number to release */
    int64_t received;        /* frames pushed to this side (timeline.py's counters, kept here) */
    int64_t placed;
    int64_t committed;       /* samples on the side's timeline */
    int64_t held_bytes;
    int64_t ring_bytes;
    int64_t force_limit;     /* the other side is forced when this side leads by more */
    uint32_t window;         /* frames held */
    uint32_t ring_size;      /* ring slots */
    uint8_t *held_pool;
    uint32_t held_cap;       /* >= the hold limit: held_bytes never exceeds it here */
    uint32_t held_start;
    uint32_t held_head;
    uint32_t *held_len;      /* window entries */
    uint8_t *ring_pool;
    uint32_t ring_cap;       /* >= the ring limit: ring_bytes never exceeds it here */
    uint32_t ring_start;
    int64_t *ring_seq;       /* ring_size entries */
    int32_t *ring_len;       /* ring_size entries */
} cs_lane;

/* Places scanned Media messages start, start + 1, ... (media, seqs and payloads: the bytes of
 * cs_media_scan's media, seqs and out arrays, as mediascan.ScannedMedia keeps them) on lanes[0]
 * (left) and lanes[1] (right), as timeline.py's push would, while each is the next frame of its
 * side's steady state and placing it needs nothing else: no ring eviction, no shedding over
 * hold_limit bytes, no forcing of the other side.  Stops after the message that made a block
 * ready (acc0 + left's released >= block and acc1 + right's released >= block: acc0 and acc1
 * are the audio each side held before the call), or before a message it does not place.
 * Returns the index of the first message not placed.
 *
 * report[8 * k ...] for side k: next, received, placed, committed, held_bytes, ring_bytes (as
 * after the call), then where the audio the side released starts in its ring_pool and how many
 * bytes it is: the ring's newest payloads, contiguous in the circular pool, intact because a
 * call releases at most ring_cap bytes per side (it stops before more). */
size_t cs_inorder_place(cs_lane *lanes, const char *media, const char *seqs, const char *payloads,
                        size_t start, size_t count, int64_t hold_limit, int64_t ring_limit,
                        size_t acc0, size_t acc1, size_t block, int64_t *report);
