// OpenCV decodes a cut or corrupted JPEG without an error: libjpeg warns
// ("Premature end of JPEG file", "Corrupt JPEG data: bad Huffman code") and
// fills what it lost with grey or with an older frame's pixels, and
// cv::imdecode ignores the warning. This runs libjpeg's own decoder over
// the same bytes with an error manager that keeps the first warning. It
// decodes at 1/8 scale: the whole entropy-coded stream is still read (that
// is where damage shows), but the inverse DCT and colour conversion, most
// of a decode's cost, shrink to nothing.
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

#include "jpegcheck.h"

struct check_error {
	struct jpeg_error_mgr pub;
	jmp_buf escape;
	int damaged;
};

static void on_error_exit(j_common_ptr cinfo) {
	struct check_error *err = (struct check_error *)cinfo->err;
	longjmp(err->escape, 1);
}

// Warnings that mean pixels were lost or made up. Others (an unknown JFIF
// revision, an odd Adobe transform code) leave the image whole.
static int loses_data(int code) {
	switch (code) {
	case JWRN_JPEG_EOF:
	case JWRN_HIT_MARKER:
	case JWRN_HUFF_BAD_CODE:
	case JWRN_ARITH_BAD_CODE:
	case JWRN_MUST_RESYNC:
	case JWRN_NOT_SEQUENTIAL:
	case JWRN_BOGUS_PROGRESSION:
	case JWRN_EXTRANEOUS_DATA: // scan bytes the decoder could not place
		return 1;
	}
	return 0;
}

static void on_message(j_common_ptr cinfo, int level) {
	struct check_error *err = (struct check_error *)cinfo->err;
	if (level < 0 && !err->damaged && loses_data(err->pub.msg_code)) {
		err->damaged = 1;
		longjmp(err->escape, 2); // the first sign is enough
	}
}

int tfy_jpeg_check(const unsigned char *buf, size_t len, char *msg, size_t msglen) {
	struct jpeg_decompress_struct cinfo;
	struct check_error err;
	JSAMPARRAY row = NULL;
	memset(&cinfo, 0, sizeof cinfo);
	cinfo.err = jpeg_std_error(&err.pub);
	err.pub.error_exit = on_error_exit;
	err.pub.emit_message = on_message;
	err.damaged = 0;
	if (setjmp(err.escape)) {
		char text[JMSG_LENGTH_MAX];
		(*cinfo.err->format_message)((j_common_ptr)&cinfo, text);
		snprintf(msg, msglen, "%s", text);
		jpeg_destroy_decompress(&cinfo);
		return 1;
	}
	jpeg_create_decompress(&cinfo);
	jpeg_mem_src(&cinfo, buf, (unsigned long)len);
	jpeg_read_header(&cinfo, TRUE);
	cinfo.scale_num = 1;
	cinfo.scale_denom = 8;
	cinfo.dct_method = JDCT_IFAST;
	cinfo.do_fancy_upsampling = FALSE;
	cinfo.do_block_smoothing = FALSE;
	jpeg_start_decompress(&cinfo);
	row = (*cinfo.mem->alloc_sarray)((j_common_ptr)&cinfo, JPOOL_IMAGE,
	                                 cinfo.output_width * cinfo.output_components, 1);
	while (cinfo.output_scanline < cinfo.output_height) {
		jpeg_read_scanlines(&cinfo, row, 1);
	}
	jpeg_finish_decompress(&cinfo);
	jpeg_destroy_decompress(&cinfo);
	return 0;
}
