package core

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strings"
)

// Algorithm identifies how a stanza's wrapped bytes were produced. Codes are
// part of the wrapped-key format; see docs/format.md.
type Algorithm uint8

// Defined wrapping algorithms.
const (
	// AlgAES256GCM: AES-256-GCM with a fresh random 96-bit nonce and a
	// 128-bit tag; wrapped bytes are nonce || ciphertext || tag. The
	// provider's associated data binds the encryption context.
	AlgAES256GCM Algorithm = 0x01
	// AlgAES256KWP: AES-256 key wrap with padding (RFC 5649).
	AlgAES256KWP Algorithm = 0x02
	// AlgAWSKMS: an AWS KMS symmetric CiphertextBlob, opaque to keyctl.
	AlgAWSKMS Algorithm = 0x03

	// AlgPrivateMin and AlgPrivateMax bound the private-use range, for
	// third-party providers; core accepts these codes without naming them.
	AlgPrivateMin Algorithm = 0xE0
	AlgPrivateMax Algorithm = 0xFE
)

var algNames = map[Algorithm]string{
	AlgAES256GCM: "aes-256-gcm",
	AlgAES256KWP: "aes-256-kwp",
	AlgAWSKMS:    "aws-kms",
}

// Known reports whether a is defined by this format version or lies in the
// private-use range.
func (a Algorithm) Known() bool {
	_, ok := algNames[a]
	return ok || (a >= AlgPrivateMin && a <= AlgPrivateMax)
}

// String returns the algorithm's name, "private-0xNN" in the private-use
// range, or "unknown-0xNN".
func (a Algorithm) String() string {
	if n, ok := algNames[a]; ok {
		return n
	}
	if a >= AlgPrivateMin && a <= AlgPrivateMax {
		return fmt.Sprintf("private-0x%02x", uint8(a))
	}
	return fmt.Sprintf("unknown-0x%02x", uint8(a))
}

// Limits of the wrapped-key format, enforced before any allocation.
const (
	MaxStanzas         = 16
	MaxProviderTypeLen = 32
	MaxKeyIDLen        = 1024
	MaxKeyVersionLen   = 1024
	MaxWrappedLen      = 8192
	// MaxWrappedKeyBinary is the largest binary wrapped key the limits allow.
	MaxWrappedKeyBinary = wkHeaderLen + MaxStanzas*(1+MaxProviderTypeLen+2+MaxKeyIDLen+2+MaxKeyVersionLen+1+2+MaxWrappedLen)
	// MaxWrappedKeyText is the largest text wrapped key the limits allow.
	MaxWrappedKeyText = len(WrappedKeyTextPrefix) + (MaxWrappedKeyBinary*4+2)/3
)

// WrappedKeyFormatV1 is the format version this package writes.
const WrappedKeyFormatV1 = 1

// WrappedKeyTextPrefix starts the text form of a wrapped key.
const WrappedKeyTextPrefix = "keyctl-wk1:"

// WrappedKeyMagic starts the binary form of a wrapped key.
const WrappedKeyMagic = "KCWK"

var wkMagic = []byte(WrappedKeyMagic)

const wkHeaderLen = 4 + 1 + 1 // magic, version, stanza count

var b64 = base64.RawURLEncoding.Strict()

// Stanza is one wrap of a DEK under one KEK version. core never parses Data;
// only the provider named by Provider and KeyID does.
type Stanza struct {
	// Provider is the provider type: lower-case ASCII letters, digits, '-',
	// '_' and '.', starting with a letter, 1 to 32 bytes.
	Provider string
	// KeyID identifies the KEK within the provider type, 1 to 1024 bytes.
	KeyID string
	// KeyVersion identifies the exact KEK version that wrapped, 0 to 1024
	// bytes (a local version number, a CKA_ID, the key ARN KMS returns).
	KeyVersion string
	// Algorithm says how Data was produced.
	Algorithm Algorithm
	// Data is the wrapped DEK, opaque to core, 1 to 8192 bytes.
	Data []byte
}

// Ref returns the stanza's provider type and key id.
func (s Stanza) Ref() KeyRef { return KeyRef{Provider: s.Provider, KeyID: s.KeyID} }

// Validate checks the stanza against the format's limits. Errors wrap
// ErrMalformed or ErrUnknownAlgorithm.
func (s Stanza) Validate() error {
	if err := validProviderType(s.Provider); err != nil {
		return err
	}
	if len(s.KeyID) == 0 || len(s.KeyID) > MaxKeyIDLen || !printable(s.KeyID) {
		return fmt.Errorf("key id: length %d not in 1..%d or not printable UTF-8: %w", len(s.KeyID), MaxKeyIDLen, ErrMalformed)
	}
	if len(s.KeyVersion) > MaxKeyVersionLen || !printable(s.KeyVersion) {
		return fmt.Errorf("key version: length %d over %d or not printable UTF-8: %w", len(s.KeyVersion), MaxKeyVersionLen, ErrMalformed)
	}
	if !s.Algorithm.Known() {
		return fmt.Errorf("algorithm code 0x%02x: %w", uint8(s.Algorithm), ErrUnknownAlgorithm)
	}
	if len(s.Data) == 0 || len(s.Data) > MaxWrappedLen {
		return fmt.Errorf("wrapped bytes: length %d not in 1..%d: %w", len(s.Data), MaxWrappedLen, ErrMalformed)
	}
	return nil
}

func validProviderType(p string) error {
	if len(p) == 0 || len(p) > MaxProviderTypeLen {
		return fmt.Errorf("provider type: length %d not in 1..%d: %w", len(p), MaxProviderTypeLen, ErrMalformed)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		ok := (c >= 'a' && c <= 'z') || (i > 0 && ((c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
		if !ok {
			return fmt.Errorf("provider type %q: want [a-z][a-z0-9._-]*: %w", p, ErrMalformed)
		}
	}
	return nil
}

// WrappedKey is one DEK wrapped under one or more KEKs. Unwrapping succeeds
// with any stanza that a configured provider can open. The zero value is not
// a valid record: it needs at least one stanza.
//
// The binary form is specified in docs/format.md; the text form is
// [WrappedKeyTextPrefix] followed by the unpadded base64url of the binary
// form. Both are canonical: parsing then marshalling gives back the same
// bytes.
type WrappedKey struct {
	// Stanzas are the wraps, in the order they were added. No two share the
	// same provider, key id and key version.
	Stanzas []Stanza
}

// Validate checks the record against the format's limits.
func (w *WrappedKey) Validate() error {
	if len(w.Stanzas) == 0 || len(w.Stanzas) > MaxStanzas {
		return fmt.Errorf("wrapped key: %d wraps, want 1..%d: %w", len(w.Stanzas), MaxStanzas, ErrMalformed)
	}
	for i, s := range w.Stanzas {
		if err := s.Validate(); err != nil {
			return fmt.Errorf("wrapped key: wrap %d: %w", i, err)
		}
		for j := range i {
			o := w.Stanzas[j]
			if o.Provider == s.Provider && o.KeyID == s.KeyID && o.KeyVersion == s.KeyVersion {
				return fmt.Errorf("wrapped key: wraps %d and %d both name %s version %q: %w", j, i, s.Ref(), s.KeyVersion, ErrMalformed)
			}
		}
	}
	return nil
}

// Clone returns a deep copy of w.
func (w *WrappedKey) Clone() *WrappedKey {
	out := &WrappedKey{Stanzas: make([]Stanza, len(w.Stanzas))}
	for i, s := range w.Stanzas {
		s.Data = bytes.Clone(s.Data)
		out.Stanzas[i] = s
	}
	return out
}

// binaryLen returns the length of the binary form of a valid w.
func (w *WrappedKey) binaryLen() int {
	n := wkHeaderLen
	for _, s := range w.Stanzas {
		n += 1 + len(s.Provider) + 2 + len(s.KeyID) + 2 + len(s.KeyVersion) + 1 + 2 + len(s.Data)
	}
	return n
}

// MarshalBinary returns the binary form. It fails if w is not valid.
func (w *WrappedKey) MarshalBinary() ([]byte, error) {
	if err := w.Validate(); err != nil {
		return nil, err
	}
	out := make([]byte, 0, w.binaryLen())
	out = append(out, wkMagic...)
	out = append(out, WrappedKeyFormatV1, byte(len(w.Stanzas)))
	for _, s := range w.Stanzas {
		out = append(out, byte(len(s.Provider)))
		out = append(out, s.Provider...)
		out = binary.BigEndian.AppendUint16(out, uint16(len(s.KeyID)))
		out = append(out, s.KeyID...)
		out = binary.BigEndian.AppendUint16(out, uint16(len(s.KeyVersion)))
		out = append(out, s.KeyVersion...)
		out = append(out, byte(s.Algorithm))
		out = binary.BigEndian.AppendUint16(out, uint16(len(s.Data)))
		out = append(out, s.Data...)
	}
	return out, nil
}

// MarshalText returns the text form. It fails if w is not valid.
func (w *WrappedKey) MarshalText() ([]byte, error) {
	bin, err := w.MarshalBinary()
	if err != nil {
		return nil, err
	}
	out := make([]byte, len(WrappedKeyTextPrefix)+b64.EncodedLen(len(bin)))
	copy(out, WrappedKeyTextPrefix)
	b64.Encode(out[len(WrappedKeyTextPrefix):], bin)
	return out, nil
}

// String returns the text form, or a description of why w is invalid.
func (w *WrappedKey) String() string {
	t, err := w.MarshalText()
	if err != nil {
		return "invalid wrapped key: " + err.Error()
	}
	return string(t)
}

// UnmarshalBinary parses the binary form. Errors wrap ErrMalformed,
// ErrUnsupportedVersion or ErrUnknownAlgorithm; on error w is unchanged.
func (w *WrappedKey) UnmarshalBinary(b []byte) error {
	p, err := parseWrappedKeyBinary(b)
	if err != nil {
		return err
	}
	*w = *p
	return nil
}

// UnmarshalText parses the text form, exactly: no surrounding whitespace.
// Errors wrap ErrMalformed, ErrUnsupportedVersion or ErrUnknownAlgorithm; on
// error w is unchanged.
func (w *WrappedKey) UnmarshalText(t []byte) error {
	p, err := parseWrappedKeyText(t)
	if err != nil {
		return err
	}
	*w = *p
	return nil
}

// ParseWrappedKey parses a wrapped key in either form: the text form
// (surrounding ASCII whitespace, such as a final newline, is ignored) or the
// binary form, told apart by their first bytes.
func ParseWrappedKey(b []byte) (*WrappedKey, error) {
	if bytes.HasPrefix(b, wkMagic) {
		return parseWrappedKeyBinary(b)
	}
	t := bytes.TrimSpace(b)
	if bytes.HasPrefix(t, []byte(WrappedKeyTextPrefix)) {
		return parseWrappedKeyText(t)
	}
	if len(t) > 0 && strings.HasPrefix(WrappedKeyTextPrefix, string(t[:min(len(t), len(WrappedKeyTextPrefix))])) {
		return nil, fmt.Errorf("wrapped key: truncated text form: %w", ErrMalformed)
	}
	if strings.HasPrefix(string(t), "keyctl-wk") {
		return nil, fmt.Errorf("wrapped key: text form %q: %w", firstN(string(t), 12), ErrUnsupportedVersion)
	}
	return nil, fmt.Errorf("wrapped key: neither %q text nor KCWK binary form: %w", WrappedKeyTextPrefix, ErrMalformed)
}

// IsBinaryWrappedKey reports whether b starts like the binary form of a
// wrapped key (as opposed to the text form or something else).
func IsBinaryWrappedKey(b []byte) bool { return bytes.HasPrefix(b, wkMagic) }

func firstN(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func parseWrappedKeyText(t []byte) (*WrappedKey, error) {
	if len(t) > MaxWrappedKeyText {
		return nil, fmt.Errorf("wrapped key: text form of %d bytes exceeds the limit of %d: %w", len(t), MaxWrappedKeyText, ErrMalformed)
	}
	if !bytes.HasPrefix(t, []byte(WrappedKeyTextPrefix)) {
		if bytes.HasPrefix(t, []byte("keyctl-wk")) {
			return nil, fmt.Errorf("wrapped key: text form %q: %w", firstN(string(t), 12), ErrUnsupportedVersion)
		}
		return nil, fmt.Errorf("wrapped key: text form must start with %q: %w", WrappedKeyTextPrefix, ErrMalformed)
	}
	enc := t[len(WrappedKeyTextPrefix):]
	// encoding/base64 skips \r and \n; the canonical form has neither.
	if bytes.ContainsAny(enc, "\r\n") {
		return nil, fmt.Errorf("wrapped key: line break inside the text form: %w", ErrMalformed)
	}
	bin := make([]byte, b64.DecodedLen(len(enc)))
	n, err := b64.Decode(bin, enc)
	if err != nil {
		return nil, fmt.Errorf("wrapped key: text form is not canonical unpadded base64url: %w", ErrMalformed)
	}
	return parseWrappedKeyBinary(bin[:n])
}

// reader is a bounds-checked cursor over a binary record.
type reader struct {
	b      []byte
	off    int
	what   string // record name for messages
	stanza int    // index of the stanza being read, -1 in the header
}

// name renders a field name for a message, only when there is an error.
func (r *reader) name(field string) string {
	if r.stanza < 0 {
		return field
	}
	return fmt.Sprintf("%s of wrap %d", field, r.stanza)
}

func (r *reader) truncated(field string) error {
	return fmt.Errorf("%s: truncated at byte %d reading %s: %w", r.what, len(r.b), r.name(field), ErrMalformed)
}

func (r *reader) u8(field string) (byte, error) {
	if r.off+1 > len(r.b) {
		return 0, r.truncated(field)
	}
	v := r.b[r.off]
	r.off++
	return v, nil
}

func (r *reader) u16(field string) (int, error) {
	if r.off+2 > len(r.b) {
		return 0, r.truncated(field)
	}
	v := binary.BigEndian.Uint16(r.b[r.off:])
	r.off += 2
	return int(v), nil
}

// bytes returns the next n bytes, checking n against limit before anything
// else so that a hostile length never drives an allocation.
func (r *reader) bytes(n, limit int, field string) ([]byte, error) {
	if n > limit {
		return nil, fmt.Errorf("%s: %s length %d exceeds the limit of %d: %w", r.what, r.name(field), n, limit, ErrMalformed)
	}
	if r.off+n > len(r.b) {
		return nil, r.truncated(field)
	}
	v := r.b[r.off : r.off+n]
	r.off += n
	return v, nil
}

func parseWrappedKeyBinary(b []byte) (*WrappedKey, error) {
	const what = "wrapped key"
	if len(b) > MaxWrappedKeyBinary {
		return nil, fmt.Errorf("%s: %d bytes exceeds the limit of %d: %w", what, len(b), MaxWrappedKeyBinary, ErrMalformed)
	}
	if len(b) < len(wkMagic) || !bytes.Equal(b[:len(wkMagic)], wkMagic) {
		if len(b) < len(wkMagic) && bytes.HasPrefix(wkMagic, b) {
			return nil, fmt.Errorf("%s: truncated at byte %d reading magic: %w", what, len(b), ErrMalformed)
		}
		return nil, fmt.Errorf("%s: missing KCWK magic: %w", what, ErrMalformed)
	}
	r := &reader{b: b, off: len(wkMagic), what: what, stanza: -1}
	ver, err := r.u8("format version")
	if err != nil {
		return nil, err
	}
	if ver != WrappedKeyFormatV1 {
		return nil, fmt.Errorf("%s: format version %d (this build reads %d): %w", what, ver, WrappedKeyFormatV1, ErrUnsupportedVersion)
	}
	count, err := r.u8("wrap count")
	if err != nil {
		return nil, err
	}
	if count == 0 || int(count) > MaxStanzas {
		return nil, fmt.Errorf("%s: %d wraps, want 1..%d: %w", what, count, MaxStanzas, ErrMalformed)
	}
	w := &WrappedKey{Stanzas: make([]Stanza, 0, count)}
	for i := range int(count) {
		var s Stanza
		r.stanza = i
		n, err := r.u8("provider type length")
		if err != nil {
			return nil, err
		}
		p, err := r.bytes(int(n), MaxProviderTypeLen, "provider type")
		if err != nil {
			return nil, err
		}
		s.Provider = string(p)
		ln, err := r.u16("key id length")
		if err != nil {
			return nil, err
		}
		k, err := r.bytes(ln, MaxKeyIDLen, "key id")
		if err != nil {
			return nil, err
		}
		s.KeyID = string(k)
		ln, err = r.u16("key version length")
		if err != nil {
			return nil, err
		}
		v, err := r.bytes(ln, MaxKeyVersionLen, "key version")
		if err != nil {
			return nil, err
		}
		s.KeyVersion = string(v)
		a, err := r.u8("algorithm")
		if err != nil {
			return nil, err
		}
		s.Algorithm = Algorithm(a)
		ln, err = r.u16("wrapped bytes length")
		if err != nil {
			return nil, err
		}
		d, err := r.bytes(ln, MaxWrappedLen, "wrapped bytes")
		if err != nil {
			return nil, err
		}
		s.Data = bytes.Clone(d)
		w.Stanzas = append(w.Stanzas, s)
	}
	if r.off != len(b) {
		return nil, fmt.Errorf("%s: %d trailing bytes after the last wrap: %w", what, len(b)-r.off, ErrMalformed)
	}
	if err := w.Validate(); err != nil {
		return nil, err
	}
	return w, nil
}
