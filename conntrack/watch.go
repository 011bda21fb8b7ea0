package conntrack

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strings"
	"sync"

	"github.com/ctsyncd/ctsyncd/kernel"
)

// EventType is the kind of a conntrack event: kernel.EventNew,
// kernel.EventUpdate or kernel.EventDestroy.
type EventType = kernel.EventType

// Event is one change of the table.
type Event struct {
	Type EventType
	// PortID is the netlink port id of the socket whose request caused
	// the change; 0 when the kernel did (traffic, timeouts).
	PortID uint32
	Flow   Flow
}

// EventMask selects event types: bit t for EventType t.
type EventMask uint8

// Event masks.
const (
	EventsNew     EventMask = 1 << kernel.EventNew
	EventsUpdate  EventMask = 1 << kernel.EventUpdate
	EventsDestroy EventMask = 1 << kernel.EventDestroy
	EventsAll               = EventsNew | EventsUpdate | EventsDestroy
)

// ParseEventMask parses conntrack(8)'s -e/--event-mask value: a
// comma-separated list of NEW, UPDATES (or UPDATE), DESTROY and ALL.
func ParseEventMask(v string) (EventMask, error) {
	var m EventMask
	for _, n := range strings.Split(v, ",") {
		switch strings.ToUpper(n) {
		case "NEW":
			m |= EventsNew
		case "UPDATE", "UPDATES":
			m |= EventsUpdate
		case "DESTROY":
			m |= EventsDestroy
		case "ALL":
			m |= EventsAll
		default:
			return 0, bad("unknown event type %q (NEW, UPDATES, DESTROY, ALL)", n)
		}
	}
	return m, nil
}

// WatchOptions configure Watch.
type WatchOptions struct {
	// Types selects the event types; 0 means all.
	Types EventMask
	// ReadBuffer is the event socket's receive buffer in bytes; 0 means
	// kernel.DefaultReadBuffer (64 MiB).
	ReadBuffer int
	// Queue is the number of events buffered between the socket reader
	// and the loop; 0 means 4096. A loop slower than the events lets the
	// socket overrun, which Watch reports as ErrOverrun.
	Queue int
}

type watchItem struct {
	ev  Event
	xev ExpectEvent
	err error
}

// Watch streams the table's events that match f, until ctx ends (then the
// sequence ends without an error) or the loop stops. Events need
// net.netfilter.nf_conntrack_events=1 in the namespace (the default, 2,
// delivers them only for flows created while a listener existed).
//
// When the kernel drops events (its socket buffer overran), Watch yields
// (Event{}, ErrOverrun) and goes on: the caller missed changes and should
// re-read the table with List if it keeps state. A socket failure ends the
// sequence with (Event{}, err).
func (h *Handle) Watch(ctx context.Context, f Filter, opts WatchOptions) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		h.watch(ctx, opts, false, func(it watchItem) bool {
			if it.err == nil && !f.Match(&it.ev.Flow) {
				return true
			}
			return yield(it.ev, it.err)
		})
	}
}

// watch runs a listener (of flow events, or of expectation events when
// expect is set) and passes its items to yield until yield returns false,
// ctx ends or the socket fails.
func (h *Handle) watch(ctx context.Context, opts WatchOptions, expect bool, yield func(watchItem) bool) {
	types := opts.Types
	if types == 0 {
		types = EventsAll
	}
	q := opts.Queue
	if q <= 0 {
		q = 4096
	}
	l, err := kernel.Listen(kernel.ListenOptions{NetNS: h.nsfd, ReadBuffer: opts.ReadBuffer, Expectations: expect})
	if err != nil {
		yield(watchItem{err: fmt.Errorf("watch conntrack events: %w", err)})
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	ch := make(chan watchItem, q)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(ch)
		w := &watchHandler{ctx: ctx, ch: ch, types: types, l: l, expect: expect}
		var hd kernel.Handler = w
		if expect {
			hd = &expectWatchHandler{w}
		}
		if err := l.Run(ctx, hd); err != nil {
			select {
			case ch <- watchItem{err: fmt.Errorf("watch conntrack events: %w", err)}:
			case <-ctx.Done():
			}
		}
	}()
	defer func() {
		cancel()
		for range ch { // let the reader finish
		}
		wg.Wait()
	}()
	for it := range ch {
		if !yield(it) {
			return
		}
	}
}

// watchHandler passes a Listener's events on to Watch's loop.
type watchHandler struct {
	ctx    context.Context
	ch     chan<- watchItem
	types  EventMask
	l      *kernel.Listener
	expect bool // expectation events only; flow events are dropped
	// reported is the listener's overruns + malformed datagrams already
	// reported; touched only by the listener's goroutine.
	reported uint64
}

func (w *watchHandler) Event(ev *kernel.Event) {
	if w.expect || w.types&(1<<ev.Type) == 0 {
		return
	}
	select {
	case w.ch <- watchItem{ev: Event{Type: ev.Type, PortID: ev.PortID, Flow: ev.Flow}}:
	case <-w.ctx.Done():
	}
}

// Overrun reports lost events once per loss: the listener also calls it
// when its queue has drained after an overrun, which is no new loss. Like
// Event it blocks while the loop is behind, so the report is never dropped.
func (w *watchHandler) Overrun() {
	st := w.l.Stats()
	lost := st.Overruns + st.Malformed
	if lost == w.reported {
		return
	}
	w.reported = lost
	select {
	case w.ch <- watchItem{err: ErrOverrun}:
	case <-w.ctx.Done():
	}
}

// IsOverrun reports whether err is Watch's overrun error value.
func IsOverrun(err error) bool { return errors.Is(err, kernel.ErrOverrun) }

// expectWatchHandler adds expectation events to a watchHandler.
type expectWatchHandler struct{ *watchHandler }

func (w *expectWatchHandler) ExpectEvent(ev *kernel.ExpectEvent) {
	if w.types&(1<<ev.Type) == 0 {
		return
	}
	select {
	case w.ch <- watchItem{xev: ExpectEvent{Type: ev.Type, PortID: ev.PortID, Expect: ev.Expect}}:
	case <-w.ctx.Done():
	}
}
