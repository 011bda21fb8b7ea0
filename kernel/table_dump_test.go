package kernel

import (
	"encoding/binary"
	"testing"

	"github.com/ctsyncd/ctsyncd/flow"
)

func TestFilterSupportOf(t *testing.T) {
	for rel, want := range map[string]FilterSupport{
		"6.18.44-fc-v669":  {Mark: true, Family: true, Tuple: true, Status: true, Zone: true},
		"6.8.0-45-generic": {Mark: true, Family: true, Tuple: true, Status: true, Zone: true},
		"6.1.0-13-amd64":   {Mark: true, Family: true, Tuple: true, Status: true},
		"5.10.0-28-amd64":  {Mark: true, Family: true, Tuple: true},
		"4.19.0":           {Mark: true},
		"3.0.101":          {},
		"garbage":          {},
		"5.15rc1":          {Mark: true, Family: true, Tuple: true, Status: true},
	} {
		if got := filterSupportOf(rel); got != want {
			t.Errorf("%s: %+v, want %+v", rel, got, want)
		}
	}
}

// attrs lists the top-level attribute types of a message after nfgenmsg.
func attrs(b []byte) (family uint8, types []uint16) {
	l := binary.NativeEndian.Uint32(b)
	b = b[nlmsgHdrLen:l]
	family = b[0]
	for p := b[4:]; len(p) > 0; {
		typ, _, rest, ok := nextAttr(p)
		if !ok {
			break
		}
		types = append(types, typ)
		p = rest
	}
	return family, types
}

func TestAppendDumpRequest(t *testing.T) {
	all := FilterSupport{Mark: true, Family: true, Tuple: true, Status: true, Zone: true}
	df := DumpFilter{Family: flow.FamilyIPv4, HasMark: true, Mark: 1, Status: flow.StatusAssured, HasZone: true, Zone: 7,
		Orig: TupleFilter{Flags: FilterIPSrc | FilterProtoNum | FilterDstPort, Proto: flow.ProtoTCP}}
	fam, types := attrs(appendDumpRequest(nil, &df, all, 1))
	want := []uint16{ctaMark, ctaMarkMask, ctaStatus, ctaStatusMask, ctaZone, ctaTupleOrig, ctaFilter}
	if fam != flow.FamilyIPv4 || len(types) != len(want) {
		t.Fatalf("family %d, attributes %v; want %v", fam, types, want)
	}
	for i := range want {
		if types[i] != want[i] {
			t.Fatalf("attributes %v, want %v", types, want)
		}
	}
	// An old kernel gets a bare dump; zone 0 and a tuple filter without a
	// family are never sent.
	fam, types = attrs(appendDumpRequest(nil, &df, FilterSupport{}, 1))
	if fam != 0 || len(types) != 0 {
		t.Fatalf("old kernel: family %d, attributes %v", fam, types)
	}
	df = DumpFilter{HasZone: true, Zone: 0, Orig: TupleFilter{Flags: FilterProtoNum, Proto: flow.ProtoUDP}}
	if _, types = attrs(appendDumpRequest(nil, &df, all, 1)); len(types) != 0 {
		t.Fatalf("zone 0, tuple without family: attributes %v", types)
	}
}
