package kernel

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// addrMsg builds an RTM_NEWADDR/RTM_DELADDR as the kernel sends it.
func addrMsg(t *testing.T, typ netlink.HeaderType, index uint32, local, address string) netlink.Message {
	t.Helper()
	ae := netlink.NewAttributeEncoder()
	var family uint8 = unix.AF_INET
	for _, a := range []struct {
		typ uint16
		s   string
	}{{unix.IFA_LOCAL, local}, {unix.IFA_ADDRESS, address}} {
		if a.s == "" {
			continue
		}
		ip := netip.MustParseAddr(a.s)
		if ip.Is6() {
			family = unix.AF_INET6
		}
		ae.Bytes(a.typ, ip.AsSlice())
	}
	attrs, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, unix.SizeofIfAddrmsg, unix.SizeofIfAddrmsg+len(attrs))
	b[0] = family
	binary.NativeEndian.PutUint32(b[4:], index)
	return netlink.Message{Header: netlink.Header{Type: typ}, Data: append(b, attrs...)}
}

// The address set follows rtnetlink's messages: IFA_LOCAL wins over
// IFA_ADDRESS (a point-to-point peer), an address held by two interfaces
// stays until both lost it, other message types are ignored.
func TestAddrSet(t *testing.T) {
	s := addrSet{}
	steps := []struct {
		m    netlink.Message
		want []string
	}{
		{addrMsg(t, unix.RTM_NEWADDR, 1, "", "10.0.0.1"), []string{"10.0.0.1"}},
		{addrMsg(t, unix.RTM_NEWADDR, 2, "10.9.0.1", "10.9.0.2"), []string{"10.0.0.1", "10.9.0.1"}},
		{addrMsg(t, unix.RTM_NEWADDR, 3, "", "10.0.0.1"), []string{"10.0.0.1", "10.9.0.1"}},
		{addrMsg(t, unix.RTM_NEWADDR, 1, "", "fd00::1"), []string{"10.0.0.1", "10.9.0.1", "fd00::1"}},
		{addrMsg(t, unix.RTM_DELADDR, 1, "", "10.0.0.1"), []string{"10.0.0.1", "10.9.0.1", "fd00::1"}},
		{addrMsg(t, unix.RTM_DELADDR, 3, "", "10.0.0.1"), []string{"10.9.0.1", "fd00::1"}},
		{netlink.Message{Header: netlink.Header{Type: unix.RTM_NEWLINK}, Data: make([]byte, 16)}, []string{"10.9.0.1", "fd00::1"}},
		{addrMsg(t, unix.RTM_NEWADDR, 4, "", ""), []string{"10.9.0.1", "fd00::1"}},
	}
	for i, st := range steps {
		s.apply(st.m)
		var got []string
		for _, a := range s.addrs() {
			got = append(got, a.String())
		}
		if !slices.Equal(got, st.want) {
			t.Fatalf("step %d: %v, want %v", i, got, st.want)
		}
	}
	if _, ok := parseAddrMsg([]byte{2, 0, 0}); ok {
		t.Error("a short ifaddrmsg parsed")
	}
}
