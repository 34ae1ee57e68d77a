package models

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
)

// vitFamilies are timm's ViT sizes: width and attention heads. Heads are
// not in a checkpoint's tensors (the qkv weights are heads x head width
// either way), and width/64 is wrong for huge/14 (1280 wide, 16 heads) and
// giant/14 (1408, 16).
var vitFamilies = map[string]struct{ width, heads int }{
	"tiny": {192, 3}, "small": {384, 6}, "base": {768, 12}, "large": {1024, 16},
	"huge": {1280, 16}, "giant": {1408, 16}, "gigantic": {1664, 16},
}

// headsByWidth are the same by width, for checkpoints that name no
// architecture; 1536 is DINOv2's giant (24 heads).
var headsByWidth = map[int]int{192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1536: 24, 1664: 16}

// timmArchitecture matches timm's ViT names: vit_base_patch16_224,
// deit_small_patch16_224, deit3_large_patch16_384, vit_giant_patch14_dinov2.
var timmArchitecture = regexp.MustCompile(`^(?:vit|deit|deit3)_(tiny|small|base|large|huge|giant|gigantic)_patch\d+`)

// timmHeads reads the number of heads from a timm config.json's
// architecture name beside the weights: 0 without such a file or name.
func timmHeads(dir string, width int) (heads int, source string, err error) {
	path := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, "", nil
	}
	if err != nil {
		return 0, "", err
	}
	var c struct {
		Architecture string `json:"architecture"`
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return 0, "", fmt.Errorf("%s: %w", path, err)
	}
	m := timmArchitecture.FindStringSubmatch(c.Architecture)
	if m == nil {
		return 0, "", nil
	}
	f := vitFamilies[m[1]]
	if m[1] == "giant" && width == 1536 { // DINOv2's giant is wider than timm's
		f = struct{ width, heads int }{1536, 24}
	}
	if f.width != width {
		return 0, "", fmt.Errorf("%s says architecture %s (%d wide), but the weights are %d wide", path, c.Architecture, f.width, width)
	}
	return f.heads, fmt.Sprintf("%s architecture %s", path, c.Architecture), nil
}
