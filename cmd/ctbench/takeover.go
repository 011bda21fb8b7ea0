package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ctsyncd/ctsyncd/control"
	"github.com/ctsyncd/ctsyncd/test/cluster"
)

// takeoverRun measures the stall of a live TCP stream when fwB takes over
// with BG idle background flows, in the cluster tier's topology (client —
// fwA/fwB on two bridges — server, VIPs as the gateways, policy-drop
// forwarding that accepts only established flows and new connections from
// the client side, nf_conntrack_tcp_loose=0), without keepalived: the
// harness moves the VIPs itself, VIP first, then commits, as keepalived's
// notify does. daemon none is the control: its stream must break.
func (b *bench) takeoverRun(name, run string) {
	d, _ := daemonByName(b, name)
	dir := filepath.Join(b.work, "takeover-"+name+"-"+run)
	rec := func(metric, format string, v any) {
		b.recordTo(b.tkCSV, name, b.bg, run, metric, fmt.Sprintf(format, v))
	}
	err := runStep("takeover "+name+" run "+run, b.work, b.log, func(s *step) {
		tp := cluster.New(s, cluster.Options{NoKeepalived: true})
		defer b.keepLogs(dir, filepath.Join(b.out, "logs", "takeover-"+name+"-"+run))
		for _, fw := range tp.Firewalls() {
			fw.NS.Nft(s, natRuleset)
		}
		tp.A.NS.Exec(s, "ip", "addr", "add", cluster.ClientVIPv4+"/24", "dev", "lan0")
		tp.A.NS.Exec(s, "ip", "addr", "add", cluster.ServerVIPv4+"/24", "dev", "lan1")
		rec("load1_before", "%.2f", loadavg())
		da, db := filepath.Join(dir, "a"), filepath.Join(dir, "b")
		pa := d.start(s, tp.A.NS, tp.A.Name, tp.A.SyncAddr, tp.A.PeerSyncAddr, da, b.bg)
		pb := d.start(s, tp.B.NS, tp.B.Name, tp.B.SyncAddr, tp.B.PeerSyncAddr, db, b.bg)
		defer func() {
			for _, p := range []*proc{pa, pb} {
				if p != nil {
					p.Stop(20 * time.Second)
				}
			}
		}()
		time.Sleep(time.Second)
		gap := filepath.Join(b.bin, "streamgap")
		srv := startIn(s, tp.Server, filepath.Join(dir, "stream.out"), filepath.Join(dir, "stream.err"), gap, "-listen", cluster.ServerV4+":5001")
		time.Sleep(300 * time.Millisecond)
		cli := startIn(s, tp.Client, "", "", gap, "-connect", cluster.ServerV4+":5001", "-interval", "1ms")
		time.Sleep(time.Second)
		line, err := b.ctgen(tp.A.NS, b.bg, 1000000, b.bgRate, 2)
		os.WriteFile(filepath.Join(dir, "ctgen.out"), []byte(line), 0o644)
		if err != nil {
			s.Fatalf("%v: %s", err, line)
		}
		want, v := b.bg+1, b.bg+1
		if name != "none" {
			deadline := time.Now().Add(60 * time.Second)
			for {
				v, _ = d.external(db)
				if v >= want {
					break
				}
				if time.Now().After(deadline) {
					fmt.Fprintf(b.log, "   %s: fwB has %d of %d flows\n", name, v, want)
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		rec("external_before", "%d", v)
		if strings.HasPrefix(name, "ctsyncd") {
			time.Sleep(time.Second)
			// What the periodic reconcile does: the stream's activity (an
			// established flow's packets raise no events) reaches fwB.
			if err := control.Do(filepath.Join(da, "ctsyncd.sock"), control.Request{Command: "resync"}, new(bytes.Buffer)); err != nil {
				s.Fatalf("resync: %v", err)
			}
		}
		time.Sleep(2 * time.Second)
		if strings.HasPrefix(name, "ctsyncd") {
			rec("stream_rank", "%s", streamRank(db))
		}
		// fwA's daemon goes first (the data plane keeps forwarding): on
		// one machine its NEW listener would make fwB's commit build an
		// event per create (see pairRun).
		if pa != nil {
			pa.Stop(20 * time.Second)
		}
		// fwA dies on the data plane; fwB takes the VIPs, then commits.
		t0 := time.Now()
		batch := func(ns, cmds string) {
			c := exec.Command("ip", "-n", ns, "-batch", "-")
			c.Stdin = strings.NewReader(cmds)
			if out, err := c.CombinedOutput(); err != nil {
				s.Fatalf("ip -batch: %v: %s", err, out)
			}
		}
		batch(tp.A.NS.Name, "link set lan0 down\nlink set lan1 down\n")
		batch(tp.B.NS.Name, "addr add "+cluster.ClientVIPv4+"/24 dev lan0\naddr add "+cluster.ServerVIPv4+"/24 dev lan1\n")
		fc := tp.Client.Cmd("ip", "neigh", "flush", "dev", "eth0")
		fc.Start()
		tp.Server.Cmd("ip", "neigh", "flush", "dev", "eth0").Run()
		fc.Wait()
		d.commit(tp.B.NS, db)
		t1 := time.Now()
		time.Sleep(4 * time.Second)
		srv.Stop(5 * time.Second)
		cli.Stop(5 * time.Second)
		out, _ := os.ReadFile(filepath.Join(dir, "stream.out"))
		sl := strings.TrimSpace(string(out))
		rec("commit_cmd_s", "%.3f", t1.Sub(t0).Seconds())
		// Did the largest gap start at the takeover (not before it)?
		if gs, err := time.Parse("15:04:05.000", field(sl, "gap_start")); err == nil {
			tod := float64(t0.UTC().Hour()*3600+t0.UTC().Minute()*60+t0.UTC().Second()) + float64(t0.Nanosecond())/1e9
			g := float64(gs.Hour()*3600+gs.Minute()*60+gs.Second()) + float64(gs.Nanosecond())/1e9
			rec("gap_start_minus_takeover_s", "%.3f", g-tod)
		}
		stall := field(sl, "max_gap_s")
		if stall == "" {
			stall = "nan"
		}
		rec("stall_s", "%s", stall)
		// A stream that never came back: its last arrival is ~4 s old.
		ago, err := strconv.ParseFloat(field(sl, "last_s_ago"), 64)
		rec("stream_alive", "%d", b2i(err == nil && ago < 1))
		rec("load1_after", "%.2f", loadavg())
	})
	if err != nil {
		fmt.Fprintf(b.log, "   %v\n", err)
	}
}

// streamRank is the number of fwB's external entries less idle than the
// stream's (its place in the commit order, least idle first), or "nan".
func streamRank(dir string) string {
	var buf bytes.Buffer
	if control.Do(filepath.Join(dir, "ctsyncd.sock"), control.Request{Command: "dump", Args: []string{"external"}, JSON: true}, &buf) != nil {
		return "nan"
	}
	os.WriteFile(filepath.Join(dir, "external-sample.txt"), buf.Bytes()[:min(600, buf.Len())], 0o644)
	type entry struct {
		Dst   string  `json:"dst"`
		Sport uint16  `json:"sport"`
		Dport uint16  `json:"dport"`
		Idle  float64 `json:"idle_seconds"`
	}
	var idles []float64
	stream := -1.0
	sc := bufio.NewScanner(&buf)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e entry
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		if stream < 0 && e.Dport == 5001 && e.Sport != 5001 && e.Dst == cluster.ServerV4 {
			stream = e.Idle
		}
		idles = append(idles, e.Idle)
	}
	if stream < 0 {
		return "nan"
	}
	n := 0
	for _, v := range idles {
		if v < stream {
			n++
		}
	}
	return strconv.Itoa(n)
}
