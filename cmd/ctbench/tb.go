package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
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

// atExit are run by a signal's exit as well (what main defers).
var atExit []func()

// running is the step under way, whose cleanups a SIGINT or SIGTERM runs
// before the harness exits: its daemons stop and its namespaces go.
var running struct {
	sync.Mutex
	s *step
}

func init() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		v := <-sig
		running.Lock() // held until exit: no step starts or ends meanwhile
		if s := running.s; s != nil {
			fmt.Fprintf(os.Stderr, "ctbench: %v: stopping %s's daemons and removing its namespaces\n", v, s.name)
			s.runCleanups()
		}
		for _, f := range atExit {
			f()
		}
		os.Exit(2)
	}()
}

// runCleanups runs the cleanups not run yet, last first.
func (s *step) runCleanups() {
	for len(s.cleanups) > 0 {
		f := s.cleanups[len(s.cleanups)-1]
		s.cleanups = s.cleanups[:len(s.cleanups)-1]
		f()
	}
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
	running.Lock()
	running.s = s
	running.Unlock()
	defer func() {
		running.Lock()
		defer running.Unlock()
		running.s = nil
		s.runCleanups()
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
