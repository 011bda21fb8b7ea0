package sync

import (
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf8"
)

// MaxNodeName bounds a node name: HOST_NAME_MAX, as the config's node.name.
const MaxNodeName = 64

// ValidateName checks a node name by the rule the config applies to this
// node's own name: 1 to MaxNodeName bytes of valid UTF-8, printable, no
// spaces. Peers' names are checked the same way before their epoch is
// accepted, so that a name never carries newlines or terminal escapes into
// logs and ctsyncctl's output.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty")
	case len(name) > MaxNodeName:
		return fmt.Errorf("%d bytes long; at most %d", len(name), MaxNodeName)
	case !utf8.ValidString(name):
		return fmt.Errorf("%q is not valid UTF-8", name)
	case indexFunc(name, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0:
		return fmt.Errorf("%q contains spaces or control characters", name)
	}
	return nil
}

func indexFunc(s string, f func(rune) bool) int {
	for i, r := range s {
		if f(r) {
			return i
		}
	}
	return -1
}

// Escape returns a name as it may be printed: itself when ValidateName
// accepts it, else quoted with every control, space and non-printable
// character escaped.
func Escape(name string) string {
	if ValidateName(name) == nil {
		return name
	}
	return strconv.QuoteToASCII(name)
}
