#include <cstdlib>
#include <cstring>
#include <exception>

#include <opencv2/imgcodecs.hpp>

extern "C" {
#include "imdecode.h"
}

tfy_decoded tfy_imdecode(const unsigned char *buf, size_t len) {
	tfy_decoded out = {NULL, NULL, 0, 0, NULL};
	try {
		cv::Mat raw(1, static_cast<int>(len), CV_8UC1, const_cast<unsigned char *>(buf));
		cv::Mat img = cv::imdecode(raw, cv::IMREAD_COLOR);
		if (img.empty()) {
			return out;
		}
		cv::Mat *kept = new cv::Mat(img.isContinuous() ? img : img.clone());
		out.mat = kept;
		out.data = kept->data;
		out.rows = kept->rows;
		out.cols = kept->cols;
	} catch (const std::exception &e) {
		out.err = strdup(e.what());
	} catch (...) {
		out.err = strdup("unknown C++ exception");
	}
	return out;
}

void tfy_release(void *mat) { delete static_cast<cv::Mat *>(mat); }
