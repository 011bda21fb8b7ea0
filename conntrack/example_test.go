package conntrack_test

import (
	"context"
	"fmt"
	"log"
	"net/url"

	"github.com/ctsyncd/ctsyncd/conntrack"
)

func ExampleParseFilter() {
	f, err := conntrack.ParseFilter([]string{"-p", "tcp", "--dport", "22", "-s", "10.0.0.0/8", "-m", "0x10/0xf0"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(f)
	_, err = conntrack.ParseFilter([]string{"--dport", "ssh"})
	fmt.Println(err)
	// Output:
	// --proto tcp --orig-src 10.0.0.0/8 --orig-port-dst 22 --mark 16/0xf0
	// --dport "ssh": invalid value: not a port (0..65535)
}

func ExampleParseFilterValues() {
	q, _ := url.ParseQuery("proto=udp&dst=192.0.2.53&dport=53&zone=7")
	f, err := conntrack.ParseFilterValues(q)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(f)
	// Output:
	// --proto udp --orig-dst 192.0.2.53 --orig-port-dst 53 --zone 7
}

// Watch prints new and destroyed flows until ctx ends. A loss of events
// (the kernel's socket buffer overran) comes as an error value and the
// watch goes on.
func ExampleHandle_Watch() {
	h, err := conntrack.Open(conntrack.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close()
	ctx := context.Background()
	for ev, err := range h.Watch(ctx, conntrack.Filter{}, conntrack.WatchOptions{Types: conntrack.EventsNew | conntrack.EventsDestroy}) {
		if conntrack.IsOverrun(err) {
			log.Print("events lost; re-read the table")
			continue
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(ev.Type, conntrack.FormatFlow(&ev.Flow, false))
	}
}
