/* Batched appends of stereo G.711 blocks to WAV files, with no Python in between.
 *
 * Why in C: the disk writer's threads must hold Python's GIL around every system call they make
 * from Python, and while the event loop is busy each re-acquisition can wait a whole switch
 * interval (5 ms).  Here one call does a whole batch -- decode or interleave, pwrite the data,
 * pwrite the header, fsync -- and cffi releases the GIL once for all of it.
 *
 * This header is also the cffi cdef (csrc/build_mulaw.py reads it verbatim): declarations only.
 * Include <stddef.h> and <stdint.h> before it.
 */

enum {
    CS_APPEND_PCM16 = 0,    /* decode mu-law to 16-bit little-endian PCM, interleaved */
    CS_APPEND_ULAW = 1,     /* interleave the mu-law bytes as they are */
    CS_APPEND_RAW = 2       /* `left` holds the file's bytes already (interleaved PCM of any
                               channel count): `samples` of them are written as they are */
};

/* One block for one file.  The caller owns every buffer and keeps it alive for the call. */
typedef struct {
    int fd;                   /* open for writing; never closed here */
    int mode;                 /* CS_APPEND_PCM16, CS_APPEND_ULAW or CS_APPEND_RAW */
    const uint8_t *left;      /* `samples` mu-law bytes of the left channel (RAW: the bytes) */
    const uint8_t *right;     /* ... and of the right channel (RAW: unused) */
    size_t samples;           /* per channel (RAW: bytes) */
    int64_t offset;           /* file offset where the block's first byte goes */
    const uint8_t *header;    /* written at offset 0 after the data; NULL: no header */
    size_t header_size;
    int fsync;                /* nonzero: fsync the file after the header */
    int error;                /* out: 0, or the errno of the call that failed */
} cs_append_job;

/* Runs the jobs in order.  A job after a failed job on the same fd is not run and gets the same
 * error (so a file never has a hole).  `scratch` holds the interleaved block: at least
 * 4 * samples bytes for the largest PCM job, 2 * samples for mu-law, none for RAW; a job that
 * does not fit fails with EINVAL.  Returns the number of failed jobs. */
size_t cs_append_batch(cs_append_job *jobs, size_t count, uint8_t *scratch, size_t scratch_size);
