// Command streamgap measures the stall of one live TCP stream: the client
// writes a small record every interval, the server reads them and, when
// told to stop (SIGTERM or SIGINT) or after -duration, prints the largest
// gap between two consecutive arrivals and when it started. It is the
// stream of the takeover benchmark (bench/takeover.sh), not a test.
//
//	streamgap -listen :5001 [-duration 0]        # server, prints the result
//	streamgap -connect 10.0.2.2:5001 [-interval 1ms]
//
// Output (server): one line of key=value pairs.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	var (
		listen   = flag.String("listen", "", "server: address to listen on")
		connect  = flag.String("connect", "", "client: server address")
		interval = flag.Duration("interval", time.Millisecond, "client: time between records")
		duration = flag.Duration("duration", 0, "server: stop after this long (0: on SIGTERM)")
	)
	flag.Parse()
	var err error
	switch {
	case *listen != "":
		err = serve(*listen, *duration)
	case *connect != "":
		err = send(*connect, *interval)
	default:
		err = fmt.Errorf("need -listen or -connect")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "streamgap:", err)
		os.Exit(1)
	}
}

// send writes a 64-byte record every interval until the connection fails.
func send(addr string, interval time.Duration) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	rec := make([]byte, 64)
	t := time.NewTicker(interval)
	defer t.Stop()
	for range t.C {
		if _, err := c.Write(rec); err != nil {
			return err
		}
	}
	return nil
}

type result struct {
	bytes    int64
	maxGap   time.Duration
	gapStart time.Time
	first    time.Time
	last     time.Time
}

// serve accepts one stream and tracks the largest gap between arrivals.
func serve(addr string, duration time.Duration) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	if duration > 0 {
		go func() { time.Sleep(duration); stop <- syscall.SIGTERM }()
	}
	conns := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			conns <- c
		}
	}()
	var c net.Conn
	select {
	case c = <-conns:
	case <-stop:
		return fmt.Errorf("no connection")
	}
	defer c.Close()
	var (
		mu sync.Mutex // guards r
		r  result
	)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			now := time.Now()
			if n > 0 {
				mu.Lock()
				if r.first.IsZero() {
					r.first = now
				} else if g := now.Sub(r.last); g > r.maxGap {
					r.maxGap, r.gapStart = g, r.last
				}
				r.last = now
				r.bytes += int64(n)
				mu.Unlock()
			}
			if err != nil {
				if err != io.EOF {
					fmt.Fprintln(os.Stderr, "streamgap: read:", err)
				}
				return
			}
		}
	}()
	<-stop
	mu.Lock()
	defer mu.Unlock()
	// A stream that stopped and never came back: the gap is still open.
	if g := time.Since(r.last); !r.last.IsZero() && g > r.maxGap {
		r.maxGap, r.gapStart = g, r.last
	}
	fmt.Printf("bytes=%d max_gap_s=%.3f gap_start=%s last_s_ago=%.3f\n", r.bytes, r.maxGap.Seconds(),
		r.gapStart.UTC().Format("15:04:05.000"), time.Since(r.last).Seconds())
	return nil
}
