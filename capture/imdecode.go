package capture

/*
#cgo !windows pkg-config: opencv4
#cgo CXXFLAGS: --std=c++11
#include <stdlib.h>
#include "imdecode.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"strings"
	"unsafe"

	"gocv.io/x/gocv"
)

// decodeInto decodes an image file's bytes into dst (BGR). By hand around
// cv::imdecode because gocv's IMDecode lets OpenCV's C++ exceptions through
// and an uncaught one aborts the process: a BMP whose header OpenCV
// rejects did so (found by FuzzImageFile). Here it is an error. A JPEG
// that is cut or corrupted is refused with ErrDamaged (OpenCV would fill
// in what is missing without a word).
func decodeInto(data []byte, dst *gocv.Mat) error {
	if len(data) == 0 {
		return errors.New("empty file")
	}
	if isJPEG(data) {
		if err := checkJPEG(data); err != nil {
			return err
		}
	}
	d := C.tfy_imdecode((*C.uchar)(unsafe.Pointer(&data[0])), C.size_t(len(data)))
	if d.err != nil {
		msg := C.GoString(d.err)
		C.free(unsafe.Pointer(d.err))
		return fmt.Errorf("OpenCV cannot decode it: %s", firstLine(msg))
	}
	if d.mat == nil {
		return errors.New("not an image OpenCV can read")
	}
	defer C.tfy_release(d.mat)
	rows, cols := int(d.rows), int(d.cols)
	pixels := unsafe.Slice((*byte)(unsafe.Pointer(d.data)), rows*cols*3)
	img, err := gocv.NewMatFromBytes(rows, cols, gocv.MatTypeCV8UC3, pixels)
	if err != nil {
		return err
	}
	defer img.Close()
	img.CopyTo(dst)
	return nil
}

// firstLine keeps an OpenCV message's first non-empty line (they span
// several, with the source file and function).
func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return s
}
