package main

import (
	"fmt"
	"io"
)

// runExpect runs "ctsyncctl ct expect ...".
func runExpect(argv []string, asJSON bool, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "ctsyncctl: ct expect: expectations are not supported by this build")
	return 2
}
