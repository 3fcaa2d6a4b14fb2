// Command promlint reads a Prometheus text exposition on stdin and lints it with the
// client library's promlint package, the linter behind `promtool check metrics`.
//
// Written here because promtool itself pulls in the whole Prometheus server to build
// (more than 15 minutes on this kind of machine); this builds in seconds from the Go
// module proxy. Exit 0: clean; 1: lint problems (printed one per line); 2: unreadable.
package main

import (
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

func main() {
	problems, err := promlint.New(os.Stdin).Lint()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error while linting:", err)
		os.Exit(2)
	}
	for _, p := range problems {
		fmt.Fprintf(os.Stderr, "%s: %s\n", p.Metric, p.Text)
	}
	if len(problems) > 0 {
		os.Exit(1)
	}
}
