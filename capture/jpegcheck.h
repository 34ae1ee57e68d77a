// A JPEG's integrity, checked by decoding it with libjpeg and counting the
// warnings OpenCV's decoder ignores (see jpegcheck.c).
#ifndef TRANSFORMALY_JPEGCHECK_H
#define TRANSFORMALY_JPEGCHECK_H

#include <stddef.h>

// tfy_jpeg_check returns 0 when the JPEG decodes without a sign of lost or
// damaged data, or 1 with libjpeg's message in msg (msglen bytes at most).
int tfy_jpeg_check(const unsigned char *buf, size_t len, char *msg, size_t msglen);

#endif
