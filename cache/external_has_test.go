package cache

import (
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

func TestExternalHas(t *testing.T) {
	c := NewExternal()
	c.Apply("a", Change{Flow: tcp(1, flow.TCPEstablished, 100)}, time.Unix(1000, 0))
	k := tcp(1, 0, 0).Key
	if !c.Has("a", k) || c.Has("b", k) || c.Has("a", tcp(2, 0, 0).Key) {
		t.Fatal("Has: wrong answer")
	}
	c.Delete("a", k)
	if c.Has("a", k) {
		t.Fatal("Has after Delete")
	}
}
