package main

import (
	"encoding/json"
	"os"

	"github.com/spf13/pflag"

	"github.com/transformaly/transformaly/models"
)

func inspectCommand(fs *pflag.FlagSet) func([]string) error {
	scores := fs.Bool("calibration-scores", false, "also print the calibration scores (up to 1,001 numbers) that normal_quantile is read from")
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
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(info)
	}
}
