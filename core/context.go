package core

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// Context is an encryption context: non-secret key/value pairs bound to a wrap
// at wrap time and required, identical, at unwrap time. Providers that encrypt
// with an AEAD bind [Context.Canonical] as associated data; the AWS KMS
// provider passes it as the KMS EncryptionContext. A nil or empty Context is
// valid and binds nothing.
//
// Keys and values are UTF-8 without control characters; keys are 1 to
// [MaxContextKeyLen] bytes, values at most [MaxContextValueLen] bytes, and a
// context holds at most [MaxContextPairs] pairs.
type Context map[string]string

// Limits of a [Context].
const (
	MaxContextPairs    = 32
	MaxContextKeyLen   = 128
	MaxContextValueLen = 1024
)

// Validate reports whether c is within the limits described on [Context].
// The error wraps [ErrMalformed].
func (c Context) Validate() error {
	if len(c) > MaxContextPairs {
		return fmt.Errorf("encryption context: %d pairs, limit %d: %w", len(c), MaxContextPairs, ErrMalformed)
	}
	for k, v := range c {
		if len(k) == 0 || len(k) > MaxContextKeyLen {
			return fmt.Errorf("encryption context: key length %d not in 1..%d: %w", len(k), MaxContextKeyLen, ErrMalformed)
		}
		if len(v) > MaxContextValueLen {
			return fmt.Errorf("encryption context: value of %q: length %d over %d: %w", k, len(v), MaxContextValueLen, ErrMalformed)
		}
		if !printable(k) || !printable(v) {
			return fmt.Errorf("encryption context: key %q: not UTF-8 or has control characters: %w", k, ErrMalformed)
		}
	}
	return nil
}

// Canonical returns the deterministic byte encoding of c that AEAD-based
// providers bind as associated data: the pairs sorted by key, each written as
// a 2-byte big-endian key length, the key, a 2-byte value length, the value.
// The empty context encodes as zero bytes.
func (c Context) Canonical() []byte {
	if len(c) == 0 {
		return nil
	}
	var small [8]string // contexts are small: sort their keys without allocating
	keys := small[:0]
	if len(c) > len(small) {
		keys = make([]string, 0, len(c))
	}
	n := 0
	for k, v := range c {
		keys = append(keys, k)
		n += 4 + len(k) + len(v)
	}
	if len(keys) > 1 {
		slices.Sort(keys)
	}
	out := make([]byte, 0, n)
	for _, k := range keys {
		out = binary.BigEndian.AppendUint16(out, uint16(len(k)))
		out = append(out, k...)
		out = binary.BigEndian.AppendUint16(out, uint16(len(c[k])))
		out = append(out, c[k]...)
	}
	return out
}

// String renders c as sorted k=v pairs separated by commas, for messages.
func (c Context) String() string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(c[k])
	}
	return b.String()
}

// Clone returns a copy of c; a nil c gives nil.
func (c Context) Clone() Context {
	if c == nil {
		return nil
	}
	out := make(Context, len(c))
	for k, v := range c {
		out[k] = v
	}
	return out
}

// With returns a copy of c with key set to value.
func (c Context) With(key, value string) Context {
	out := make(Context, len(c)+1)
	for k, v := range c {
		out[k] = v
	}
	out[key] = value
	return out
}

// ParseContextPair parses one "key=value" pair as given on a command line.
func ParseContextPair(s string) (key, value string, err error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return "", "", fmt.Errorf("encryption context pair %q: want key=value: %w", s, ErrMalformed)
	}
	return k, v, nil
}

// printable reports whether s is valid UTF-8 with no control characters.
func printable(s string) bool {
	ascii := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			return false
		}
		if c >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return true
	}
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}
