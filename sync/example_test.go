package sync_test

import (
	"context"
	"fmt"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
	ctsync "github.com/ctsyncd/ctsyncd/sync"
)

// Two nodes on an in-memory network: what a's kernel has shows up in b's
// external cache, under a's name.
func Example() {
	key, _ := ctsync.ParseKey("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
	net := ctsync.NewMemNetwork(1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	inA := cache.NewInternal(nil)
	a, _ := ctsync.New(ctsync.Options{NodeName: "fw-a", Key: &key}, inA, cache.NewExternal(), net.Endpoint("fw-a"))
	exB := cache.NewExternal()
	b, _ := ctsync.New(ctsync.Options{NodeName: "fw-b", Key: &key}, cache.NewInternal(nil), exB, net.Endpoint("fw-b"))
	go a.Run(ctx)
	go b.Run(ctx)

	f := flow.Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP}, Timeout: 120}
	f.Orig.SrcPort, f.Orig.DstPort = 40000, 22
	f.Reply = f.Orig.Invert(f.Proto)
	inA.Upsert(&f)

	for exB.Len() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println(exB.Origins())
	// Output: [fw-a]
}
