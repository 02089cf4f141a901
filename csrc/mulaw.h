/* G.711 (mu-law and A-law) kernels of callstream.
 *
 * This header is also the cffi cdef (csrc/build_mulaw.py reads it verbatim), so it holds only
 * declarations cffi can parse: no preprocessor lines, no attributes.  Include <stddef.h> and
 * <stdint.h> before it.
 *
 * Contract of every function: the caller owns every buffer; nothing is allocated; lengths are
 * counts of samples (one G.711 byte is one 16-bit sample at 8 kHz); buffers must not overlap;
 * n == 0 is allowed and writes nothing.  Stereo output is interleaved int16 (dst[2i] = left,
 * dst[2i + 1] = right) and holds 2 * n samples.
 */

enum {
    CS_ULAW_SILENCE = 0xFF,     /* mu-law code of PCM 0 */
    CS_ALAW_SILENCE = 0xD5,     /* A-law code for the smallest positive step (PCM 0 encodes to it) */
    CS_ULAW_BIAS = 0x84,        /* mu-law encoder bias (132) */
    CS_ULAW_CLIP = 32635,       /* largest magnitude the mu-law encoder tells apart */
    CS_ULAW_MAX = 32124,        /* largest magnitude the mu-law decoder produces */
    CS_ALAW_MAX = 32256         /* largest magnitude the A-law decoder produces */
};

void cs_ulaw_decode(int16_t *dst, const uint8_t *src, size_t n);
void cs_ulaw_decode_stereo(int16_t *dst, const uint8_t *left, const uint8_t *right, size_t n);
void cs_ulaw_encode(uint8_t *dst, const int16_t *src, size_t n);

void cs_alaw_decode(int16_t *dst, const uint8_t *src, size_t n);
void cs_alaw_decode_stereo(int16_t *dst, const uint8_t *left, const uint8_t *right, size_t n);
void cs_alaw_encode(uint8_t *dst, const int16_t *src, size_t n);

/* The scalar table path that the functions above fall back to when the CPU has no vector path;
 * exported so that tests and the benchmark can exercise it on any machine. */
void cs_ulaw_decode_portable(int16_t *dst, const uint8_t *src, size_t n);
void cs_ulaw_decode_stereo_portable(int16_t *dst, const uint8_t *left, const uint8_t *right,
                                    size_t n);
void cs_alaw_decode_portable(int16_t *dst, const uint8_t *src, size_t n);
void cs_alaw_decode_stereo_portable(int16_t *dst, const uint8_t *left, const uint8_t *right,
                                    size_t n);

/* Name of the decode path this CPU gets: "avx2" or "portable".  A static string. */
const char *cs_g711_path(void);
