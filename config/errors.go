package config

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// ErrInvalid is matched (errors.Is) by every error Parse, Load and Validate
// return for a bad configuration, including each *Error inside a joined
// error. Errors reading the file itself (Load) do not match it.
var ErrInvalid = errors.New("invalid configuration")

// Error is one problem in a configuration, located by file, line and key.
// Its text is what the daemon prints before exiting:
//
//	/etc/ctsyncd/ctsyncd.toml:12: sync.transport: "tcp" is not one of udp, multicast, gossip
//
// Line is 0 when the line is unknown (a required key that is absent, or a
// Config built in code): the text is then "FILE: KEY: problem". Key is empty
// for a TOML syntax error that no key on its line explains ("FILE:LINE:
// problem"), and File is empty for a Config that was not read from a file
// ("KEY: problem").
type Error struct {
	File string // file name as given to Load or Parse; may be empty
	Line int    // 1-based line number; 0 if unknown
	Key  string // dotted TOML key, e.g. "sync.transport"; may be empty for syntax errors
	Msg  string // the problem, without location

	err error // underlying decoder error, if any
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Line))
		}
		b.WriteString(": ")
	} else if e.Line > 0 {
		b.WriteString("line ")
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteString(": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Is reports whether target is ErrInvalid.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// Unwrap returns the decoder's error (a toml.ParseError or the decoder's
// type-mismatch error) when the problem was found by the TOML decoder.
func (e *Error) Unwrap() error { return e.err }

// joinErrors returns nil, the only error, or all of them joined, sorted by
// line (unknown lines last) so that the output reads like the file.
func joinErrors(errs []*Error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	sort.SliceStable(errs, func(i, j int) bool {
		li, lj := errs[i].Line, errs[j].Line
		if li == 0 {
			return false
		}
		return lj == 0 || li < lj
	})
	all := make([]error, len(errs))
	for i, e := range errs {
		all[i] = e
	}
	return errors.Join(all...)
}

// decodeErrRE matches the decoder's type-mismatch errors, which are plain
// fmt errors: `toml: line 3 (last key "sync.peers"): incompatible types: ...`.
var decodeErrRE = regexp.MustCompile(`(?s)^toml: (?:line (\d+) )?\(last key ("(?:[^"\\]|\\.)*")\): (.*)$`)

// fromDecodeError converts what toml.Decode returned into an *Error.
// syntax is true when the document did not parse at all (then the decoder's
// "last key" may be a key read before the error: see keyOnLine).
func fromDecodeError(file string, data []byte, err error, syntax bool) *Error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		e := &Error{File: file, Line: pe.Position.Line, Msg: pe.Message, err: err}
		// The lexer counts a newline before reporting an error found at it
		// ("expected ']' ... but got '\n'"): name the line that it ends.
		if st := pe.Position.Start; st >= 0 && st < len(data) && data[st] == '\n' {
			e.Line = 1 + bytes.Count(data[:st], []byte{'\n'})
		}
		if !syntax {
			e.Key = pe.LastKey
		} else {
			e.Key = keyOnLine(data, e.Line, pe.LastKey)
		}
		return e
	}
	msg := err.Error()
	if m := decodeErrRE.FindStringSubmatch(msg); m != nil {
		e := &Error{File: file, Msg: rewordTypeError(m[3]), err: err}
		e.Line, _ = strconv.Atoi(m[1])
		if k, uerr := strconv.Unquote(m[2]); uerr == nil {
			e.Key = k
		}
		if h := typeHints[e.Key]; h != "" {
			e.Msg += " (" + h + ")"
		}
		return e
	}
	return &Error{File: file, Msg: strings.TrimPrefix(msg, "toml: "), err: err}
}

// keyOnLine names the key a syntax error is about: the parser's "last key"
// is the key being read when the error was found, or an earlier one, so it
// is named only if it is on the line of the error; otherwise the deepest key
// the scanner finds starting on that line, if any.
func keyOnLine(data []byte, line int, lastKey string) string {
	if line <= 0 {
		return ""
	}
	loc := locate(string(data))
	if lastKey != "" && loc.keys[lastKey] == line {
		return lastKey
	}
	best, depth := "", 0
	for k, l := range loc.keys {
		if l != line {
			continue
		}
		d := strings.Count(k, ".") + 1 // enough to compare: quoted dots are rare
		if d > depth || d == depth && k < best {
			best, depth = k, d
		}
	}
	return best
}

var (
	incompatibleRE = regexp.MustCompile(`^incompatible types: TOML value has type (.+); destination has type (.+)$`)
	mismatchRE     = regexp.MustCompile(`(?s)^type mismatch for .*: expected table but found (.+)$`)
)

// rewordTypeError shortens the decoder's type messages, which name Go types,
// into TOML terms.
func rewordTypeError(msg string) string {
	if m := incompatibleRE.FindStringSubmatch(msg); m != nil {
		return "wrong type: want " + tomlTypeName(m[2]) + ", got " + tomlTypeName(m[1])
	}
	if m := mismatchRE.FindStringSubmatch(msg); m != nil {
		return "wrong type: want a table, got " + tomlTypeName(m[1])
	}
	return msg
}

func tomlTypeName(t string) string {
	switch t {
	case "slice", "[]any", "[]interface {}":
		return "an array"
	case "[]map[string]any", "[]map[string]interface {}":
		return "an array of tables"
	case "map", "map[string]any", "map[string]interface {}":
		return "a table"
	case "string", "primitive (string-like)":
		return "a string"
	case "integer", "int64":
		return "an integer"
	case "float", "float64":
		return "a float"
	case "boolean", "bool":
		return "a boolean"
	case "time.Time":
		return "a date-time"
	}
	return t
}

// typeHints are appended to type errors for keys that are easy to get wrong.
var typeHints = map[string]string{
	"control.mode":            `write it as a quoted octal string, e.g. mode = "0600"`,
	"control.group":           `write it as a string, e.g. group = "ctsyncd" or group = "990"`,
	"sync.peers":              `write an array, e.g. peers = ["10.200.0.2:3780"]`,
	"filter.protocols":        `write an array, e.g. protocols = ["tcp", "udp"]`,
	"filter.ignore_addresses": `write an array, e.g. ignore_addresses = ["127.0.0.0/8"]`,
	"filter.tcp_states":       `write an array, e.g. tcp_states = ["established"]`,
	"kernel.resync_interval":  `write a duration string, e.g. "30s"`,
	"sync.ack_interval":       `write a duration string, e.g. "50ms"`,
	"sync.heartbeat_interval": `write a duration string, e.g. "1s"`,
	"sync.peer_timeout":       `write a duration string, e.g. "5s"`,
	"failover.purge_timeout":  `write a duration string, e.g. "60s"`,
	"failover.commit_timeout": `write a duration string, e.g. "30s"`,
	"failover.min_timeout":    `write a duration string, e.g. "30s"`,
}

// errf is a shorthand for building an *Error.
func errf(file string, line int, key, format string, args ...any) *Error {
	return &Error{File: file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)}
}
