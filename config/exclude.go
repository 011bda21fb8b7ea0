package config

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// PortRange is an inclusive range of ports, written in the config as a
// number (53) or a string "FROM-TO" ("8000-8100"); a single port is a range
// of one.
type PortRange struct{ Lo, Hi uint16 }

// UnmarshalTOML accepts a port number or a "FROM-TO" string.
func (r *PortRange) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case int64:
		if v < 1 || v > 65535 {
			return fmt.Errorf("port %d is not 1..65535", v)
		}
		*r = PortRange{uint16(v), uint16(v)}
		return nil
	case string:
		p, err := ParsePortRange(v)
		if err != nil {
			return err
		}
		*r = p
		return nil
	}
	return fmt.Errorf("wrong type: want a port number or a range such as \"8000-8100\", got %T", v)
}

// MarshalText writes the range as ParsePortRange reads it.
func (r PortRange) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// ParsePortRange parses "53" or "8000-8100".
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(strings.TrimSpace(s), "-")
	if !isRange {
		hi = lo
	}
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	switch {
	case err1 != nil || err2 != nil || a == 0 || b == 0:
		return PortRange{}, fmt.Errorf("%q is not a port 1..65535 or a range \"FROM-TO\"", s)
	case a > b:
		return PortRange{}, fmt.Errorf("%q: the range ends before it starts", s)
	}
	return PortRange{uint16(a), uint16(b)}, nil
}

// ParseMarkMask parses "VALUE" or "VALUE/MASK" (decimal or 0x hex, 32 bits).
// Without a mask every bit counts. VALUE must have no bit outside MASK, or it
// could never match.
func ParseMarkMask(s string) (value, mask uint32, err error) {
	vs, ms, hasMask := strings.Cut(strings.TrimSpace(s), "/")
	v, err := strconv.ParseUint(strings.TrimSpace(vs), 0, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("%q: %q is not a 32-bit number (decimal or 0x hex)", s, vs)
	}
	m := uint64(0xffffffff)
	if hasMask {
		if m, err = strconv.ParseUint(strings.TrimSpace(ms), 0, 32); err != nil {
			return 0, 0, fmt.Errorf("%q: mask %q is not a 32-bit number (decimal or 0x hex)", s, ms)
		}
	}
	if v&^m != 0 {
		return 0, 0, fmt.Errorf("%q: the value has bits outside the mask, so no mark would ever match", s)
	}
	return uint32(v), uint32(m), nil
}

// maxHelperName is NF_CT_HELPER_NAME_LEN less its terminating NUL.
const maxHelperName = 15

// CheckHelperName reports whether s can be a conntrack helper's name.
func CheckHelperName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty helper name")
	case len(s) > maxHelperName:
		return fmt.Errorf("%q is %d bytes long; a helper name has at most %d", s, len(s), maxHelperName)
	case strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) || r > unicode.MaxASCII }) >= 0:
		return fmt.Errorf("%q is not a helper name (printable ASCII, no spaces)", s)
	}
	return nil
}

func (f Filter) validateExclusions(v *validator) {
	for i, m := range f.IgnoreMarks {
		if _, _, err := ParseMarkMask(m); err != nil {
			v.addElem("filter.ignore_marks", i, "%v", err)
		}
	}
	for i, z := range f.IgnoreZones {
		if z < 0 || z > 65535 {
			v.addElem("filter.ignore_zones", i, "zone %d is not 0..65535", z)
		}
	}
	for i, h := range f.IgnoreHelpers {
		if err := CheckHelperName(h); err != nil {
			v.addElem("filter.ignore_helpers", i, "%v", err)
		}
	}
}
