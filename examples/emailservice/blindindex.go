package main

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"

	"github.com/keyctl/keyctl/core"
)

// MaxEmailLen is the longest e-mail address accepted, in bytes (RFC 5321's
// path limit less the angle brackets).
const MaxEmailLen = 254

// ErrBadEmail reports an e-mail address that the service does not accept.
var ErrBadEmail = errors.New("invalid e-mail address")

// NormalizeEmail returns the form of an e-mail address that the blind index
// is computed over: surrounding white space removed and the whole address,
// local part included, lowercased. Only printable ASCII is accepted (no
// spaces inside, exactly one '@', a non-empty local part of at most 64 bytes
// and a non-empty domain), so ASCII lowercasing is the whole normalisation
// and no Unicode normalisation (NFC) is needed. Errors wrap ErrBadEmail and
// never quote the address.
func NormalizeEmail(s string) (string, error) {
	s = strings.TrimSpace(s)
	if err := checkEmail(s); err != nil {
		return "", err
	}
	return strings.ToLower(s), nil // ASCII only, checked above
}

// trimEmail validates an address and returns it with surrounding white space
// removed but its case kept: the form the service encrypts and stores.
func trimEmail(s string) (string, error) {
	s = strings.TrimSpace(s)
	if err := checkEmail(s); err != nil {
		return "", err
	}
	return s, nil
}

func checkEmail(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty", ErrBadEmail)
	}
	if len(s) > MaxEmailLen {
		return fmt.Errorf("%w: %d bytes, longer than %d", ErrBadEmail, len(s), MaxEmailLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("%w: only printable ASCII without spaces is accepted (byte %d)", ErrBadEmail, i)
		}
	}
	at := strings.IndexByte(s, '@')
	if at < 0 || strings.Count(s, "@") != 1 {
		return fmt.Errorf("%w: must contain exactly one '@'", ErrBadEmail)
	}
	if at == 0 || at > 64 {
		return fmt.Errorf("%w: the part before '@' must be 1 to 64 bytes", ErrBadEmail)
	}
	if at == len(s)-1 {
		return fmt.Errorf("%w: nothing after '@'", ErrBadEmail)
	}
	return nil
}

// indexKeyInfo is the HKDF info string that derives a blind-index HMAC key
// from an index DEK. It names the table and column, so a DEK that ends up in
// another role (or another column's index) yields an unrelated key.
const indexKeyInfo = "keyctl example emailservice v1: blind index users.email (HMAC-SHA256)"

// IndexKey is the HMAC-SHA256 key of one blind-index column. It prints as
// "IndexKey(dek=<id>, REDACTED)", never its bytes.
type IndexKey struct {
	dekID uint32
	key   []byte
}

// deriveIndexKey derives the HMAC key from the index DEK with HKDF-SHA256
// (no salt; the DEK is already uniformly random). The caller still owns and
// zeroes dek.
func deriveIndexKey(dekID uint32, dek core.DEK) (*IndexKey, error) {
	if err := dek.Validate(); err != nil {
		return nil, fmt.Errorf("index DEK %08x: %w", dekID, err)
	}
	k, err := hkdf.Key(sha256.New, []byte(dek), nil, indexKeyInfo, sha256.Size)
	if err != nil {
		return nil, fmt.Errorf("index DEK %08x: derive HMAC key: %w", dekID, err)
	}
	return &IndexKey{dekID: dekID, key: k}, nil
}

// DEKID returns the id of the index-keyset DEK the key was derived from.
func (k *IndexKey) DEKID() uint32 { return k.dekID }

// Sum returns the blind index of an already normalised e-mail address: the
// full 32-byte HMAC-SHA256 (not truncated: the column is also the
// uniqueness constraint).
func (k *IndexKey) Sum(normalized string) []byte {
	m := hmac.New(sha256.New, k.key)
	m.Write([]byte(normalized))
	return m.Sum(nil)
}

// String implements fmt.Stringer without revealing the key.
func (k *IndexKey) String() string { return fmt.Sprintf("IndexKey(dek=%08x, REDACTED)", k.dekID) }

// GoString implements fmt.GoStringer without revealing the key.
func (k *IndexKey) GoString() string { return k.String() }

// Format implements fmt.Formatter so that every verb prints the redacted
// form.
func (k *IndexKey) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(k.String())) }

// zero overwrites the key bytes (best effort: hmac keeps its own pads only
// for the duration of one Sum).
func (k *IndexKey) zero() { clear(k.key) }
