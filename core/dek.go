package core

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
)

// DEKSize is the length in bytes of a data key: AES-256.
const DEKSize = 32

// DEK is a plaintext data key. Its fmt verbs, String and GoString print
// "DEK(REDACTED)" so that a DEK that slips into a log line or an error message
// does not leak, and it refuses to be marshalled to JSON or text. Read the
// bytes with an explicit conversion, []byte(d), where you mean it.
//
// Whoever holds a DEK owns it and should call [DEK.Zero] when done.
type DEK []byte

// NewDEK returns a fresh random 32-byte DEK from crypto/rand.
func NewDEK() (DEK, error) {
	d := make(DEK, DEKSize)
	if _, err := rand.Read(d); err != nil {
		return nil, fmt.Errorf("generate DEK: %w", err)
	}
	return d, nil
}

// Zero overwrites the key bytes with zeros. Go may have made copies that this
// cannot reach (for instance inside a cipher.AEAD); it is a best effort.
func (d DEK) Zero() {
	clear(d)
}

// Equal reports in constant time whether d and o hold the same bytes.
func (d DEK) Equal(o DEK) bool {
	return len(d) == len(o) && subtle.ConstantTimeCompare(d, o) == 1
}

// Clone returns a copy of d that the caller owns.
func (d DEK) Clone() DEK {
	if d == nil {
		return nil
	}
	return append(DEK(nil), d...)
}

// Validate reports whether d has the length of an AES-256 key.
func (d DEK) Validate() error {
	if len(d) != DEKSize {
		return fmt.Errorf("DEK is %d bytes, want %d: %w", len(d), DEKSize, ErrMalformed)
	}
	return nil
}

const redacted = "DEK(REDACTED)"

// String implements fmt.Stringer without revealing the key.
func (d DEK) String() string { return redacted }

// GoString implements fmt.GoStringer without revealing the key.
func (d DEK) GoString() string { return redacted }

// Format implements fmt.Formatter so that every verb (%x and %v included)
// prints "DEK(REDACTED)".
func (d DEK) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

var errDEKMarshal = errors.New("core: refusing to marshal a plaintext DEK")

// MarshalJSON refuses: a plaintext DEK is never serialised implicitly.
func (d DEK) MarshalJSON() ([]byte, error) { return nil, errDEKMarshal }

// MarshalText refuses: a plaintext DEK is never serialised implicitly.
func (d DEK) MarshalText() ([]byte, error) { return nil, errDEKMarshal }
