// Image decoding through OpenCV with its C++ exceptions caught: gocv's
// IMDecode lets them through, and an uncaught one aborts the process.
#ifndef TRANSFORMALY_IMDECODE_H
#define TRANSFORMALY_IMDECODE_H

#include <stddef.h>

typedef struct {
	void *mat;           // the decoded cv::Mat, released by tfy_release
	unsigned char *data; // its BGR pixels, rows * cols * 3 bytes, continuous
	int rows, cols;
	char *err; // the exception's message (free it), or NULL
} tfy_decoded;

tfy_decoded tfy_imdecode(const unsigned char *buf, size_t len);
void tfy_release(void *mat);

#endif
