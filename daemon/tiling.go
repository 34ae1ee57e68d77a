package daemon

import (
	"fmt"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/models"
)

// CheckBundles reads each camera's bundle metadata (not its weights) and
// checks the camera against it: a tiled bundle's tile must fit in the
// camera's frame, its roi after rotation or else the width and height
// asked of the device (a frame known only when it comes is checked then:
// the camera stops with an error naming both sizes). One error a problem,
// naming the key, joined.
func (c Config) CheckBundles() error {
	var errs []error
	infos := map[string]models.BundleInfo{}
	for i := range c.Cameras {
		cam := c.Camera(i)
		key := func(k string) string { return fmt.Sprintf("cameras[%d].%s", i, k) }
		info, ok := infos[cam.Model]
		if !ok {
			var err error
			if info, _, err = models.ReadBundle(cam.Model); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", key("model"), err))
				continue
			}
			infos[cam.Model] = info
		}
		t := info.Tiling
		if t == nil {
			continue
		}
		w, h, what := cam.Width, cam.Height, "width, height"
		if cam.ROI != "" {
			roi, err := capture.ParseROI(cam.ROI)
			if err != nil {
				continue // Validate names it
			}
			w, h, what = roi.Dx(), roi.Dy(), "roi"
		}
		if r := deref(cam.Rotate); r == 90 || r == 270 {
			w, h = h, w
		}
		if w > 0 && h > 0 {
			if err := t.Fits(w, h); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w (bundle %s)", key(what), err, cam.Model))
			}
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return joinLines(errs)
}
