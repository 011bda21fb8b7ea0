package main

import (
	"fmt"
	"io"
	"os"
	"testing"
)

// step adapts one benchmark step (a pair run, a kernel-ceiling run, a
// takeover run) to the testing.TB that internal/netnstest and the cluster
// tier's topology take, so that the benchmark builds its namespaces with
// the same code as the tests. Fatal ends the step (Run recovers it);
// Cleanup functions run, last first, when the step ends.
//
// The embedded testing.TB is nil: it only supplies the interface's
// unexported method. Every method the builders call is defined here.
type step struct {
	testing.TB
	name     string
	dir      string
	log      io.Writer
	cleanups []func()
	failed   bool
}

// stepFatal is the panic value of step.Fatal.
type stepFatal struct{ msg string }

func (s *step) Helper()                 {}
func (s *step) Name() string            { return s.name }
func (s *step) Failed() bool            { return s.failed }
func (s *step) Cleanup(f func())        { s.cleanups = append(s.cleanups, f) }
func (s *step) Log(a ...any)            { fmt.Fprintln(s.log, append([]any{"   " + s.name + ":"}, a...)...) }
func (s *step) Logf(f string, a ...any) { s.Log(fmt.Sprintf(f, a...)) }
func (s *step) Error(a ...any)          { s.failed = true; s.Log(a...) }
func (s *step) Errorf(f string, a ...any) {
	s.failed = true
	s.Logf(f, a...)
}
func (s *step) Fatal(a ...any) {
	s.failed = true
	panic(stepFatal{fmt.Sprint(a...)})
}
func (s *step) Fatalf(f string, a ...any) { s.Fatal(fmt.Sprintf(f, a...)) }
func (s *step) FailNow()                  { s.Fatal("FailNow") }
func (s *step) Skip(a ...any)             { s.Fatal(a...) }
func (s *step) Skipf(f string, a ...any)  { s.Fatalf(f, a...) }
func (s *step) SkipNow()                  { s.Fatal("SkipNow") }
func (s *step) Skipped() bool             { return false }
func (s *step) Setenv(k, v string)        { os.Setenv(k, v) }

// TempDir returns a new directory under the step's work directory.
func (s *step) TempDir() string {
	d, err := os.MkdirTemp(s.dir, "tmp")
	if err != nil {
		s.Fatalf("temp dir: %v", err)
	}
	return d
}

// runStep runs fn as a step named name with its own cleanups; a Fatal in
// fn (or in a builder it calls) ends the step and is returned as an error.
func runStep(name, dir string, log io.Writer, fn func(s *step)) (err error) {
	s := &step{name: name, dir: dir, log: log}
	defer func() {
		for i := len(s.cleanups) - 1; i >= 0; i-- {
			s.cleanups[i]()
		}
	}()
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(stepFatal)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("%s: %s", name, f.msg)
		}
	}()
	fn(s)
	return nil
}
