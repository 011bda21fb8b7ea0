package config

import (
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// locator maps keys to the lines that define them. The TOML decoder keeps
// key positions to itself, so this is a small scanner of its own: it knows
// table headers, dotted and quoted keys, inline tables, multi-line arrays and
// strings, and comments. It runs on documents the decoder has accepted; on
// anything else it gives up quietly (missing lines become 0), never panics.
type locator struct {
	keys  map[string]int   // toml.Key.String() → line of its first appearance
	elems map[string][]int // array key → line of each top-level element
	aot   map[string]int   // array of tables → elements seen so far
}

// line returns the line of key, or of the closest enclosing table that has
// one (a required key that is absent is reported at its table header), or 0.
func (l *locator) line(key string) int {
	if l == nil {
		return 0
	}
	for key != "" {
		if n, ok := l.keys[key]; ok {
			return n
		}
		i := strings.LastIndexByte(key, '.')
		if i < 0 {
			break
		}
		key = key[:i]
	}
	return 0
}

// elemLine returns the line of element i of the array key, falling back to
// the line of the key.
func (l *locator) elemLine(key string, i int) int {
	if l != nil {
		if e := l.elems[key]; i >= 0 && i < len(e) {
			return e[i]
		}
	}
	return l.line(key)
}

func locate(src string) *locator {
	sc := &scanner{s: src, line: 1, loc: &locator{keys: map[string]int{}, elems: map[string][]int{}, aot: map[string]int{}}}
	sc.document()
	return sc.loc
}

type scanner struct {
	s    string
	i    int
	line int
	loc  *locator
}

func (sc *scanner) eof() bool { return sc.i >= len(sc.s) }

func (sc *scanner) peek() byte {
	if sc.i < len(sc.s) {
		return sc.s[sc.i]
	}
	return 0
}

func (sc *scanner) record(k toml.Key, line int) {
	if len(k) == 0 {
		return
	}
	s := k.String()
	if _, ok := sc.loc.keys[s]; !ok {
		sc.loc.keys[s] = line
	}
}

// recordDotted records every prefix of table+key beyond the table itself
// (a.b.c = 1 also defines a.b), and returns the full key.
func (sc *scanner) recordDotted(table, key toml.Key, line int) toml.Key {
	full := make(toml.Key, 0, len(table)+len(key))
	full = append(full, table...)
	for _, p := range key {
		full = append(full, p)
		sc.record(full, line)
	}
	return full
}

// skipBlank skips spaces and tabs (and stray carriage returns).
func (sc *scanner) skipBlank() {
	for !sc.eof() {
		switch sc.s[sc.i] {
		case ' ', '\t', '\r':
			sc.i++
		default:
			return
		}
	}
}

// skipSpace skips blanks, newlines and comments.
func (sc *scanner) skipSpace() {
	for !sc.eof() {
		switch sc.s[sc.i] {
		case ' ', '\t', '\r':
			sc.i++
		case '\n':
			sc.i++
			sc.line++
		case '#':
			sc.skipLine()
		default:
			return
		}
	}
}

// skipLine moves past the next newline.
func (sc *scanner) skipLine() {
	for !sc.eof() {
		c := sc.s[sc.i]
		sc.i++
		if c == '\n' {
			sc.line++
			return
		}
	}
}

func (sc *scanner) document() {
	var table, elem toml.Key // elem: the current array-of-tables element
	for {
		sc.skipSpace()
		if sc.eof() {
			return
		}
		line := sc.line
		if sc.peek() == '[' {
			sc.i++
			aot := sc.peek() == '['
			if aot {
				sc.i++
			}
			sc.skipBlank()
			k, ok := sc.key()
			if ok && sc.peek() == ']' {
				table = k
				sc.recordDotted(nil, k, line)
				elem = nil
				if aot {
					// Element i of an array of tables is also "key.i".
					name := k.String()
					i := sc.loc.aot[name]
					sc.loc.aot[name] = i + 1
					elem = append(append(toml.Key{}, k...), strconv.Itoa(i))
					sc.record(elem, line)
				}
			}
			sc.skipLine()
			continue
		}
		k, ok := sc.key()
		if !ok || sc.peek() != '=' {
			sc.skipLine()
			continue
		}
		sc.i++
		if elem != nil {
			sc.recordDotted(elem, k, line)
		}
		full := sc.recordDotted(table, k, line)
		sc.value(full.String(), full)
		sc.skipLine() // the rest of the line: blanks and a comment
	}
}

// key reads a dotted key, leaving the scanner after trailing blanks.
func (sc *scanner) key() (toml.Key, bool) {
	var k toml.Key
	for {
		sc.skipBlank()
		part, ok := sc.keyPart()
		if !ok {
			return nil, false
		}
		k = append(k, part)
		sc.skipBlank()
		if sc.peek() != '.' {
			return k, true
		}
		sc.i++
	}
}

func isBare(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func (sc *scanner) keyPart() (string, bool) {
	switch sc.peek() {
	case '"':
		start := sc.i
		sc.i++
		for !sc.eof() {
			c := sc.s[sc.i]
			switch c {
			case '\\':
				sc.i += 2
				continue
			case '"':
				sc.i++
				return unquoteBasic(sc.s[start:sc.i]), true
			case '\n':
				return "", false
			}
			sc.i++
		}
		return "", false
	case '\'':
		end := strings.IndexAny(sc.s[sc.i+1:], "'\n")
		if end < 0 || sc.s[sc.i+1+end] != '\'' {
			return "", false
		}
		part := sc.s[sc.i+1 : sc.i+1+end]
		sc.i += end + 2
		return part, true
	}
	start := sc.i
	for !sc.eof() && isBare(sc.s[sc.i]) {
		sc.i++
	}
	return sc.s[start:sc.i], sc.i > start
}

// unquoteBasic decodes a TOML basic string including its quotes; on failure
// it returns the text between the quotes.
func unquoteBasic(q string) string {
	if !strings.Contains(q, `\`) {
		return q[1 : len(q)-1]
	}
	if s, err := strconv.Unquote(strings.ReplaceAll(q, `\e`, `\x1b`)); err == nil {
		return s
	}
	return q[1 : len(q)-1]
}

// value skips one value. name is the key's string form (for element lines
// of arrays) and key the key itself (for inline tables); both may be empty.
func (sc *scanner) value(name string, key toml.Key) {
	sc.skipBlank()
	switch {
	case strings.HasPrefix(sc.s[sc.i:], `"""`):
		sc.multiline(`"""`, true)
	case strings.HasPrefix(sc.s[sc.i:], `'''`):
		sc.multiline(`'''`, false)
	case sc.peek() == '"':
		sc.i++
		for !sc.eof() {
			c := sc.s[sc.i]
			if c == '\n' {
				return
			}
			sc.i++
			if c == '\\' {
				if sc.peek() != '\n' {
					sc.i++
				}
				continue
			}
			if c == '"' {
				return
			}
		}
	case sc.peek() == '\'':
		sc.i++
		for !sc.eof() {
			c := sc.s[sc.i]
			if c == '\n' {
				return
			}
			sc.i++
			if c == '\'' {
				return
			}
		}
	case sc.peek() == '[':
		sc.i++
		for {
			sc.skipSpace()
			switch sc.peek() {
			case 0:
				return
			case ']':
				sc.i++
				return
			case ',':
				sc.i++
				continue
			}
			if name != "" {
				sc.loc.elems[name] = append(sc.loc.elems[name], sc.line)
			}
			start := sc.i
			sc.value("", nil)
			if sc.i == start {
				sc.i++ // unexpected character: make progress
			}
		}
	case sc.peek() == '{':
		sc.i++
		for {
			sc.skipSpace()
			switch sc.peek() {
			case 0:
				return
			case '}':
				sc.i++
				return
			case ',':
				sc.i++
				continue
			}
			line := sc.line
			start := sc.i
			k, ok := sc.key()
			if !ok || sc.peek() != '=' {
				if sc.i == start {
					sc.i++
				}
				continue
			}
			sc.i++
			var full toml.Key
			if key != nil {
				full = sc.recordDotted(key, k, line)
			}
			var fullName string
			if full != nil {
				fullName = full.String()
			}
			sc.value(fullName, full)
		}
	default:
		for !sc.eof() {
			switch sc.s[sc.i] {
			case ' ', '\t', '\r', '\n', ',', ']', '}', '#':
				return
			}
			sc.i++
		}
	}
}

// multiline skips a multi-line string starting at its opening delimiter.
func (sc *scanner) multiline(delim string, escapes bool) {
	sc.i += len(delim)
	for !sc.eof() {
		c := sc.s[sc.i]
		switch {
		case c == '\n':
			sc.line++
		case escapes && c == '\\':
			if sc.i+1 < len(sc.s) && sc.s[sc.i+1] == '\n' {
				sc.line++
			}
			sc.i += 2
			continue
		case strings.HasPrefix(sc.s[sc.i:], delim):
			sc.i += len(delim)
			// Up to two more quotes belong to the content: `""""` ends it.
			for n := 0; n < 2 && sc.peek() == delim[0]; n++ {
				sc.i++
			}
			return
		}
		sc.i++
	}
}
