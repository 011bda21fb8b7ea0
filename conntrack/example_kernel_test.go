//go:build kernel

package conntrack_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ctsyncd/ctsyncd/conntrack"
)

// exampleNetNS is the throw-away network namespace the examples use in
// the kernel tier; with "" they would use the current one.
var exampleNetNS string

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		b := make([]byte, 4)
		rand.Read(b)
		name := "ctex" + hex.EncodeToString(b)
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "ip netns add %s: %v\n%s", name, err, out)
			os.Exit(1)
		}
		// A conntrack-using rule loads nf_conntrack into the namespace.
		nft := exec.Command("ip", "netns", "exec", name, "nft", "-f", "-")
		nft.Stdin = strings.NewReader("table inet probe {\n\tchain c {\n\t\ttype filter hook output priority 0;\n\t\tct state new accept\n\t}\n}\n")
		if out, err := nft.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "nft: %v\n%s", err, out)
			exec.Command("ip", "netns", "del", name).Run()
			os.Exit(1)
		}
		exampleNetNS = name
	}
	code := m.Run()
	if exampleNetNS != "" {
		exec.Command("ip", "netns", "del", exampleNetNS).Run()
	}
	os.Exit(code)
}

// create makes flows from conntrack -I style options.
func create(h *conntrack.Handle, specs ...string) {
	for _, s := range specs {
		spec, err := conntrack.ParseFilter(strings.Fields(s))
		if err != nil {
			log.Fatal(err)
		}
		fl, err := conntrack.FlowFrom(spec, 600)
		if err != nil {
			log.Fatal(err)
		}
		if err := h.Create(context.Background(), &fl); err != nil {
			log.Fatal(err)
		}
	}
}

// List the SSH flows from 10.1.0.0/24.
func ExampleHandle_List() {
	h, err := conntrack.Open(conntrack.Options{NetNS: exampleNetNS})
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close()
	create(h,
		"-p tcp -s 10.1.0.1 -d 192.0.2.1 --sport 40001 --dport 22 --state ESTABLISHED -u SEEN_REPLY,ASSURED",
		"-p tcp -s 10.1.0.2 -d 192.0.2.1 --sport 40002 --dport 22 --state ESTABLISHED -u SEEN_REPLY,ASSURED",
		"-p tcp -s 10.1.0.2 -d 192.0.2.1 --sport 40003 --dport 443 --state ESTABLISHED")

	ssh, err := conntrack.ParseFilter([]string{"-p", "tcp", "--dport", "22", "-s", "10.1.0.0/24"})
	if err != nil {
		log.Fatal(err)
	}
	for fl, err := range h.List(context.Background(), ssh) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(fl.SrcAddr(), fl.Orig.SrcPort, "->", fl.DstAddr(), fl.Orig.DstPort)
	}
	// Unordered output:
	// 10.1.0.1 40001 -> 192.0.2.1 22
	// 10.1.0.2 40002 -> 192.0.2.1 22
}

// Count and delete the flows of one client, as `conntrack -D -s ADDR`.
func ExampleHandle_DeleteMatching() {
	h, err := conntrack.Open(conntrack.Options{NetNS: exampleNetNS})
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close()
	ctx := context.Background()
	create(h,
		"-p udp -s 10.2.0.1 -d 192.0.2.53 --sport 5001 --dport 53",
		"-p udp -s 10.2.0.1 -d 192.0.2.53 --sport 5002 --dport 53",
		"-p icmp -s 10.2.0.1 -d 192.0.2.53 --icmp-type 8 --icmp-code 0 --icmp-id 1",
		"-p udp -s 10.2.0.2 -d 192.0.2.53 --sport 5001 --dport 53")

	client := conntrack.Filter{OrigSrc: mustPrefix("10.2.0.1/32")}
	n, err := h.Count(ctx, client)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("flows of 10.2.0.1:", n)
	n, err = h.DeleteMatching(ctx, client)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("deleted:", n)
	n, _ = h.Count(ctx, conntrack.Filter{OrigSrc: mustPrefix("10.2.0.0/24")})
	fmt.Println("left in 10.2.0.0/24:", n)
	// Output:
	// flows of 10.2.0.1: 3
	// deleted: 3
	// left in 10.2.0.0/24: 1
}

// Set the mark of one flow, keeping its other bits, and read it back.
func ExampleHandle_Update() {
	h, err := conntrack.Open(conntrack.Options{NetNS: exampleNetNS})
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close()
	ctx := context.Background()
	create(h, "-p tcp -s 10.3.0.1 -d 192.0.2.80 --sport 1234 --dport 80 --state ESTABLISHED -m 0x101")

	spec, _ := conntrack.ParseFilter(strings.Fields("-p tcp -s 10.3.0.1 -d 192.0.2.80 --sport 1234 --dport 80"))
	key, err := spec.Key()
	if err != nil {
		log.Fatal(err)
	}
	// The low byte of the mark becomes 0x42: (0x101 &^ 0xff) | 0x42.
	if err := h.Update(ctx, key, conntrack.Change{SetMark: true, Mark: 0x42, MarkMask: 0xff}); err != nil {
		log.Fatal(err)
	}
	fl, err := h.Get(ctx, key)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("mark=%#x\n", fl.Mark)
	// Output:
	// mark=0x142
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
