package sync

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
)

// KeyLen is the length of the pre-shared key.
const KeyLen = 32

// TagLen is the length of the AEAD tag appended to a sealed body.
const TagLen = 16

// maxKeyFile bounds what LoadKey reads.
const maxKeyFile = 4096

// LoadKey reads a pre-shared key file: 32 bytes written as 64 hexadecimal
// characters; surrounding whitespace and a trailing newline are ignored. A
// file readable or writable by group or others, owned by another user than
// this process's (or root), not a regular file, or a symbolic link (it is
// opened with O_NOFOLLOW) is refused.
func LoadKey(path string) ([KeyLen]byte, error) {
	var key [KeyLen]byte
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return key, fmt.Errorf("%w: %s is a symbolic link; name the key file itself", ErrKeyFile, path)
		}
		return key, fmt.Errorf("%w: %w", ErrKeyFile, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return key, fmt.Errorf("%w: %w", ErrKeyFile, err)
	}
	if !st.Mode().IsRegular() {
		return key, fmt.Errorf("%w: %s is not a regular file", ErrKeyFile, path)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 && int(sys.Uid) != os.Geteuid() {
		return key, fmt.Errorf("%w: %s: owned by uid %d, not by root or this process's user (uid %d); chown it",
			ErrKeyFile, path, sys.Uid, os.Geteuid())
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return key, fmt.Errorf("%w: %s: mode %04o lets group or others access the key; chmod 600 it",
			ErrKeyFile, path, perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile))
	if err != nil {
		return key, fmt.Errorf("%w: %s: %w", ErrKeyFile, path, err)
	}
	key, err = ParseKey(string(b))
	if err != nil {
		return key, fmt.Errorf("%w: %s: %v", ErrKeyFile, path, err)
	}
	return key, nil
}

// ParseKey decodes a key written as 64 hexadecimal characters, surrounding
// whitespace ignored.
func ParseKey(s string) ([KeyLen]byte, error) {
	var key [KeyLen]byte
	s = strings.TrimSpace(s)
	if len(s) != 2*KeyLen {
		return key, fmt.Errorf("want %d hexadecimal characters, have %d", 2*KeyLen, len(s))
	}
	if _, err := hex.Decode(key[:], []byte(s)); err != nil {
		return key, fmt.Errorf("not hexadecimal: %v", err)
	}
	return key, nil
}

// GenerateKey returns a new random key as 64 hexadecimal characters and a
// newline, the content of a key file.
func GenerateKey() string {
	var key [KeyLen]byte
	rand.Read(key[:]) // never fails (crypto/rand panics on a broken system RNG)
	return hex.EncodeToString(key[:]) + "\n"
}

// epochKeyInfo prefixes the HKDF info; the sender's node id and epoch follow.
const epochKeyInfo = "ctsyncd sync v1 epoch key"

// epochAEAD returns the AEAD of one sender epoch: AES-256-GCM under
// HKDF-SHA256(psk, info = label || node id || epoch). Every datagram of the
// epoch uses a distinct counter as nonce, so a key never sees a nonce twice
// and never wears out (2^64 datagrams).
func epochAEAD(psk *[KeyLen]byte, node, epoch uint64) (cipher.AEAD, error) {
	var info [len(epochKeyInfo) + 16]byte
	copy(info[:], epochKeyInfo)
	binary.BigEndian.PutUint64(info[len(epochKeyInfo):], node)
	binary.BigEndian.PutUint64(info[len(epochKeyInfo)+8:], epoch)
	k, err := hkdf.Key(sha256.New, psk[:], nil, string(info[:]), 32)
	if err != nil {
		return nil, err
	}
	blk, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

// counterNonce is the 12-byte GCM nonce of a datagram counter.
func counterNonce(counter uint64) [12]byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[4:], counter)
	return n
}

// seal appends the datagram of header h and body to dst: the header, then
// the body sealed under aead (h.Flags gets flagSealed), or the body as is
// when aead is nil (insecure).
func seal(dst []byte, h header, body []byte, aead cipher.AEAD) []byte {
	if aead != nil {
		h.Flags |= flagSealed
	}
	start := len(dst)
	dst = appendHeader(dst, &h)
	if aead == nil {
		return append(dst, body...)
	}
	n := counterNonce(h.Counter)
	hdr := dst[start:]
	return aead.Seal(dst, n[:], body, hdr)
}

// open authenticates a datagram and returns its body (in a new buffer when
// sealed). aead nil means insecure: the datagram must not be sealed.
func open(b []byte, h *header, aead cipher.AEAD) ([]byte, error) {
	sealed := h.Flags&flagSealed != 0
	if aead == nil {
		if sealed {
			return nil, fmt.Errorf("%w: sealed datagram but no key configured", ErrAuth)
		}
		return b[HeaderLen:], nil
	}
	if !sealed {
		return nil, fmt.Errorf("%w: unsealed datagram", ErrAuth)
	}
	if len(b) < HeaderLen+TagLen {
		return nil, fmt.Errorf("%w: too short for a tag", ErrAuth)
	}
	n := counterNonce(h.Counter)
	body, err := aead.Open(nil, n[:], b[HeaderLen:], b[:HeaderLen])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	return body, nil
}

// replayWindow accepts each counter once, and none older than the window.
type replayWindow struct {
	top  uint64              // highest counter accepted
	bits [replayWords]uint64 // bit i of the ring: counter top-i seen (i < replayBits)
}

const (
	replayWords = 16
	replayBits  = replayWords * 64
)

// reset makes every counter up to top count as seen.
func (w *replayWindow) reset(top uint64) {
	w.top = top
	for i := range w.bits {
		w.bits[i] = ^uint64(0)
	}
}

func (w *replayWindow) bit(c uint64) (word int, mask uint64) {
	i := c % replayBits
	return int(i / 64), 1 << (i % 64)
}

// check reports whether counter c is new; it does not record it.
func (w *replayWindow) check(c uint64) bool {
	if c == 0 {
		return false
	}
	if c > w.top {
		return true
	}
	if w.top-c >= replayBits {
		return false
	}
	wd, m := w.bit(c)
	return w.bits[wd]&m == 0
}

// mark records counter c, which check accepted.
func (w *replayWindow) mark(c uint64) {
	if c > w.top {
		if c-w.top >= replayBits {
			clear(w.bits[:])
		} else {
			for x := w.top + 1; x < c; x++ {
				wd, m := w.bit(x)
				w.bits[wd] &^= m
			}
		}
		w.top = c
	}
	wd, m := w.bit(c)
	w.bits[wd] |= m
}
