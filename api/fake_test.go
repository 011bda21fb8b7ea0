package api

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"sync"

	"github.com/ctsyncd/ctsyncd/flow"
)

// fakeFilter selects by proto and dport only: enough to exercise the
// handler, which treats filters as opaque.
type fakeFilter struct {
	proto uint8
	dport int // -1: any
}

func (f *fakeFilter) Empty() bool    { return f.proto == 0 && f.dport < 0 }
func (f *fakeFilter) String() string { return fmt.Sprintf("proto=%d dport=%d", f.proto, f.dport) }
func (f *fakeFilter) match(fl *flow.Flow) bool {
	return (f.proto == 0 || fl.Proto == f.proto) && (f.dport < 0 || int(fl.Orig.DstPort) == f.dport)
}

// fakeFlows is a kernel table in memory.
type fakeFlows struct {
	mu      sync.Mutex
	flows   []flow.Flow
	parsed  int // ParseFilter calls
	deletes int
	updates int
}

func (s *fakeFlows) ParseFilter(q url.Values) (Filter, error) {
	s.mu.Lock()
	s.parsed++
	s.mu.Unlock()
	f := &fakeFilter{dport: -1}
	for k, vs := range q {
		v := vs[0]
		switch k {
		case "proto":
			p, ok := flow.ProtoByName(v)
			if !ok {
				return nil, &ParamError{Param: "proto", Problem: fmt.Sprintf("%q is not a protocol", v)}
			}
			f.proto = p
		case "dport":
			n, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return nil, &ParamError{Param: "dport", Problem: fmt.Sprintf("%q is not a port", v)}
			}
			f.dport = int(n)
		default:
			return nil, &ParamError{Param: k, Problem: "unknown parameter"}
		}
	}
	return f, nil
}

func (s *fakeFlows) List(ctx context.Context, src Source, f Filter, fn func(*Item) error) error {
	s.mu.Lock()
	flows := slices.Clone(s.flows)
	s.mu.Unlock()
	ff := f.(*fakeFilter)
	for i := range flows {
		if !ff.match(&flows[i]) {
			continue
		}
		it := Item{Flow: &flows[i]}
		if src == SourceExternal {
			it.Origin = "peer"
		}
		if err := fn(&it); err != nil {
			return err
		}
	}
	return nil
}

func (s *fakeFlows) Delete(ctx context.Context, f Filter) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deletes++
	ff := f.(*fakeFilter)
	n := len(s.flows)
	s.flows = slices.DeleteFunc(s.flows, func(fl flow.Flow) bool { return ff.match(&fl) })
	return n - len(s.flows), nil
}

func (s *fakeFlows) Update(ctx context.Context, f Filter, c Change) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.updates++
	ff := f.(*fakeFilter)
	n := 0
	for i := range s.flows {
		if ff.match(&s.flows[i]) {
			if c.Mark != nil {
				s.flows[i].Mark = *c.Mark
			}
			if c.Timeout != nil {
				s.flows[i].Timeout = *c.Timeout
			}
			n++
		}
	}
	return n, nil
}

func (s *fakeFlows) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.flows)
}

type fakeStatus struct{}

func (fakeStatus) Status(context.Context) (any, error) {
	return map[string]any{"node": "fw-a", "role": "MASTER"}, nil
}

type fakeActions struct {
	mu    sync.Mutex
	calls []string
}

func (a *fakeActions) Action(ctx context.Context, name string) (any, int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, name)
	if name == "bulk" {
		return nil, 0, fmt.Errorf("bulk: %w", ErrUnavailable)
	}
	return map[string]any{"action": name, "flows": 3}, 3, nil
}

// testFlows makes n flows: TCP and UDP, ports spread so that sorts have
// ties and a deterministic order.
func testFlows(n int) []flow.Flow {
	out := make([]flow.Flow, n)
	for i := range out {
		f := &out[i]
		f.Family = flow.FamilyIPv4
		f.Proto = flow.ProtoTCP
		if i%3 == 0 {
			f.Proto = flow.ProtoUDP
		}
		f.Orig.Src = flow.AddrFrom(netipAddr(10, 0, byte(i>>8), byte(i)))
		f.Orig.Dst = flow.AddrFrom(netipAddr(192, 168, 0, byte(i%7)))
		f.Orig.SrcPort = uint16(1024 + i)
		f.Orig.DstPort = uint16(80 + i%5)
		f.Reply = f.Orig.Invert(f.Proto)
		f.Mark = uint32(i % 11)
		f.Timeout = uint32(100 + (i*37)%500)
		if f.Proto == flow.ProtoTCP {
			f.TCP.State = flow.TCPEstablished
		}
	}
	return out
}
