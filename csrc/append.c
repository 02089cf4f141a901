/* Batched WAV appends; see append.h. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

#include "mulaw.h"
#include "append.h"

static int write_all(int fd, const uint8_t *data, size_t size, int64_t offset)
{
    while (size > 0) {
        ssize_t done = pwrite(fd, data, size, (off_t)offset);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (done == 0)
            return EIO;
        data += done;
        size -= (size_t)done;
        offset += done;
    }
    return 0;
}

static void to_little_endian(int16_t *samples, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (size_t i = 0; i < n; i++) {
        uint16_t v = (uint16_t)samples[i];
        samples[i] = (int16_t)(uint16_t)((v << 8) | (v >> 8));
    }
#else
    (void)samples;
    (void)n;
#endif
}

static int run_job(const cs_append_job *job, uint8_t *scratch, size_t scratch_size)
{
    size_t n = job->samples;
    size_t size;
    const uint8_t *data = scratch;
    if (job->mode == CS_APPEND_RAW) {
        size = n;
        data = job->left;
    } else if (job->mode == CS_APPEND_PCM16) {
        size = 4 * n;
        if (size > scratch_size)
            return EINVAL;
        cs_ulaw_decode_stereo((int16_t *)(void *)scratch, job->left, job->right, n);
        to_little_endian((int16_t *)(void *)scratch, 2 * n);
    } else if (job->mode == CS_APPEND_ULAW) {
        size = 2 * n;
        if (size > scratch_size)
            return EINVAL;
        for (size_t i = 0; i < n; i++) {
            scratch[2 * i] = job->left[i];
            scratch[2 * i + 1] = job->right[i];
        }
    } else {
        return EINVAL;
    }
    int error = write_all(job->fd, data, size, job->offset);
    if (!error && job->header != NULL)
        error = write_all(job->fd, job->header, job->header_size, 0);
    if (!error && job->fsync && fsync(job->fd) != 0)
        error = errno;
    return error;
}

size_t cs_append_batch(cs_append_job *jobs, size_t count, uint8_t *scratch, size_t scratch_size)
{
    size_t failed = 0;
    for (size_t i = 0; i < count; i++) {
        jobs[i].error = 0;
        for (size_t j = 0; failed && j < i; j++) {  /* an earlier failure on this fd stops it */
            if (jobs[j].error && jobs[j].fd == jobs[i].fd) {
                jobs[i].error = jobs[j].error;
                break;
            }
        }
        if (!jobs[i].error)
            jobs[i].error = run_job(&jobs[i], scratch, scratch_size);
        if (jobs[i].error)
            failed++;
    }
    return failed;
}
