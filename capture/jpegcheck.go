package capture

/*
#cgo pkg-config: libjpeg
#include <stdlib.h>
#include "jpegcheck.h"
*/
import "C"

import (
	"bytes"
	"errors"
	"fmt"
	"unsafe"
)

// ErrDamaged marks a frame or image whose bytes are cut, corrupted or not
// an image at all: decoded, it would show made-up pixels, or nothing.
// Cameras skip and count such frames instead of scoring them.
var ErrDamaged = errors.New("damaged image")

// damagedError keeps its cause's message and is ErrDamaged.
type damagedError struct{ error }

func (e damagedError) Unwrap() error        { return e.error }
func (e damagedError) Is(target error) bool { return target == ErrDamaged }

// damaged marks err as ErrDamaged.
func damaged(err error) error { return damagedError{err} }

// isJPEG tells JPEG data by its start-of-image marker.
func isJPEG(data []byte) bool { return bytes.HasPrefix(data, []byte{0xFF, 0xD8, 0xFF}) }

// checkJPEG decodes a JPEG with libjpeg (cheaply, see jpegcheck.c) and
// returns an error wrapping ErrDamaged at the first warning that means lost
// data: a JPEG cut short, a corrupted scan.
func checkJPEG(data []byte) error {
	if len(data) == 0 {
		return damaged(errors.New("JPEG of no bytes"))
	}
	var msg [200]C.char
	if C.tfy_jpeg_check((*C.uchar)(unsafe.Pointer(&data[0])), C.size_t(len(data)), &msg[0], C.size_t(len(msg))) != 0 {
		return damaged(fmt.Errorf("JPEG damaged: %s", C.GoString(&msg[0])))
	}
	return nil
}
