package main

import (
	"encoding/json"
	"os"

	"github.com/spf13/pflag"

	"github.com/transformaly/transformaly/models"
)

func inspectCommand(fs *pflag.FlagSet) func([]string) error {
	scores := fs.Bool("calibration-scores", false, "also print the calibration scores (up to 1,001 numbers) that normal_quantile is read from, and each feature space's normal scores the combined score is made from (as many)")
	return func(args []string) error {
		if len(args) != 1 {
			return usageError("give exactly one bundle file")
		}
		info, _, err := models.ReadBundle(args[0])
		if err != nil {
			return err
		}
		if !*scores {
			info.Calibration.Scores = nil
			if p := info.Patch; p != nil {
				p.Combination.Image.Scores, p.Combination.Patch.Scores = nil, nil
			}
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(info)
	}
}
