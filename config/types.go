package config

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration written in the config as a Go duration string
// ("50ms", "1s", "1m30s"). A bare number is refused: it has no unit.
type Duration struct{ time.Duration }

// UnmarshalText parses a duration string with time.ParseDuration.
func (d *Duration) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	if digits := strings.TrimLeft(s, "+-"); digits != "" && digits != "0" && strings.Trim(digits, "0123456789") == "" {
		return fmt.Errorf("%q has no unit: write a duration string such as \"%ss\" or \"%sms\"", s, s, s)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q: write e.g. \"50ms\", \"30s\", \"1m30s\"", s)
	}
	d.Duration = v
	return nil
}

// MarshalText formats the duration as time.Duration.String does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// ByteSize is a size in bytes. The config accepts an integer (bytes) or a
// string with a unit: "512KiB", "64MiB", "1GiB", and the short forms "8K",
// "8M", "1G" which are also powers of 1024, as in sysctl and systemd; "kB",
// "MB", "GB" are powers of 1000. Units are case-insensitive; a space between
// number and unit is allowed.
type ByteSize int64

var byteUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
	"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
	"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
	"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
}

// ParseByteSize parses a size such as "64MiB", "8M" or "1048576".
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("invalid size %q: write bytes or a number with a unit, e.g. \"64MiB\"", s)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	mult, ok := byteUnits[strings.ToLower(strings.TrimSpace(t[i:]))]
	if !ok {
		return 0, fmt.Errorf("invalid size %q: unknown unit %q (use KiB, MiB, GiB, or K, M, G)", s, strings.TrimSpace(t[i:]))
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return ByteSize(n * mult), nil
}

// UnmarshalTOML accepts an integer number of bytes or a size string.
func (b *ByteSize) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case int64:
		if v < 0 {
			return fmt.Errorf("negative size %d", v)
		}
		*b = ByteSize(v)
		return nil
	case string:
		n, err := ParseByteSize(v)
		if err != nil {
			return err
		}
		*b = n
		return nil
	case float64:
		return errors.New("wrong type: want an integer number of bytes or a string such as \"64MiB\", got a float")
	}
	return fmt.Errorf("wrong type: want an integer number of bytes or a string such as \"64MiB\", got %T", v)
}

// String formats the size with the largest binary unit that divides it
// exactly: "64MiB", "1GiB", "1000".
func (b ByteSize) String() string {
	for _, u := range []struct {
		name string
		mult int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b != 0 && int64(b)%u.mult == 0 {
			return strconv.FormatInt(int64(b)/u.mult, 10) + u.name
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// MarshalText formats the size as String does; ParseByteSize reads it back.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }
