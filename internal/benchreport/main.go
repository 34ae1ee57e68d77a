// Command benchreport turns `go test -bench` output (stdin) into a table
// (stdout) and a JSON file, so `make bench` leaves a record to compare.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// result is one benchmark line.
type result struct {
	Name       string             `json:"name"`
	Package    string             `json:"package"`
	Iterations int                `json:"iterations"`
	Metrics    map[string]float64 `json:"metrics"`
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(-\d+)?\s+(\d+)\s+(.*)$`)

func main() {
	out := flag.String("json", "bench.json", "where to write the results as JSON")
	flag.Parse()
	var results []result
	var pkg, cpu string
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "pkg: "):
			pkg = strings.TrimPrefix(line, "pkg: ")
		case strings.HasPrefix(line, "cpu: "):
			cpu = strings.TrimSpace(strings.TrimPrefix(line, "cpu: "))
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[3])
		r := result{Name: strings.TrimPrefix(m[1], "Benchmark"), Package: pkg, Iterations: n, Metrics: map[string]float64{}}
		fields := strings.Fields(m[4])
		for i := 0; i+1 < len(fields); i += 2 {
			if v, err := strconv.ParseFloat(fields[i], 64); err == nil {
				r.Metrics[fields[i+1]] = v
			}
		}
		results = append(results, r)
	}
	data, _ := json.MarshalIndent(map[string]any{"cpu": cpu, "results": results}, "", "  ")
	if err := os.WriteFile(*out, data, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
	fmt.Printf("\n| benchmark | results |\n|---|---|\n")
	// The usual units first, in this order; a benchmark's own after them,
	// sorted; ns/op (the whole run's time) left to the JSON.
	known := []string{"ms/image", "ms/step", "ms/update", "GFLOP/s", "of-peak", "peak-GFLOP/s", "images/s", "frames/s", "frames/cpu-s",
		"train-images/s", "fit/steps", "latency-p50-ms", "latency-p99-ms", "peak-rss-MB"}
	for _, r := range results {
		var parts []string
		for _, unit := range known {
			if v, ok := r.Metrics[unit]; ok {
				parts = append(parts, fmt.Sprintf("%.4g %s", v, unit))
			}
		}
		for _, unit := range slices.Sorted(maps.Keys(r.Metrics)) {
			if unit != "ns/op" && !slices.Contains(known, unit) {
				parts = append(parts, fmt.Sprintf("%.4g %s", r.Metrics[unit], unit))
			}
		}
		fmt.Printf("| %s | %s |\n", r.Name, strings.Join(parts, ", "))
	}
	fmt.Printf("\n(%s; JSON in %s)\n", cpu, *out)
}
