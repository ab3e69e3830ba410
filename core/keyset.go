package core

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// DEKState is the life-cycle state of a DEK in a keyset.
type DEKState string

// DEK states. A keyset with any DEK has exactly one primary.
const (
	// StatePrimary: new values are encrypted under this DEK.
	StatePrimary DEKState = "primary"
	// StateDecryptOnly: kept to decrypt values written before the primary
	// changed.
	StateDecryptOnly DEKState = "decrypt-only"
	// StateRetired: no longer loaded; values under it no longer decrypt. It
	// may be destroyed once a verification pass proves no value uses it.
	StateRetired DEKState = "retired"
)

// Valid reports whether s is a defined state.
func (s DEKState) Valid() bool {
	return s == StatePrimary || s == StateDecryptOnly || s == StateRetired
}

// KeysetFormatV1 is the keyset format version this package writes.
const KeysetFormatV1 = 1

// Limits of a keyset.
const (
	// MaxKeysetDEKs bounds a keyset's DEKs (ids are 32-bit, picked at
	// random). A keyset file is also bounded by MaxKeysetBytes (about
	// 200,000 DEKs); a SQL store holds up to MaxKeysetDEKs, read in pages.
	MaxKeysetDEKs  = 1 << 24
	MaxKeysetBytes = 64 << 20
)

// DEKContextKey is the encryption-context key under which a keyset binds each
// DEK's id to its wraps, so a wrapped key moved to another entry no longer
// unwraps.
const DEKContextKey = "keyctl.dek_id"

// KeysetEntry is one DEK of a keyset.
type KeysetEntry struct {
	// ID names the DEK in field ciphertexts; never 0.
	ID uint32 `json:"id"`
	// State is the DEK's life-cycle state.
	State DEKState `json:"state"`
	// Created is when the DEK was generated.
	Created time.Time `json:"created"`
	// Wrapped holds the DEK's wraps, bound to Context().
	Wrapped *WrappedKey `json:"wrapped"`
}

// Context returns the encryption context bound to the entry's wraps.
func (e *KeysetEntry) Context() Context {
	return Context{DEKContextKey: fmt.Sprintf("%08x", e.ID)}
}

// Keyset is the list of a keyring's DEKs. It holds only wrapped keys and can
// be stored anywhere (a file, a database row); see docs/format.md for its
// JSON form. A Keyset is not safe for concurrent mutation.
type Keyset struct {
	// Format is the keyset format version; KeysetFormatV1.
	Format int `json:"format"`
	// DEKs are the keyset's entries, oldest first.
	DEKs []KeysetEntry `json:"deks"`
}

// NewKeyset returns an empty keyset.
func NewKeyset() *Keyset { return &Keyset{Format: KeysetFormatV1} }

// ParseKeyset parses and validates the JSON form of a keyset. Unknown fields,
// a size over MaxKeysetBytes and any inconsistency are errors wrapping
// ErrMalformed or ErrUnsupportedVersion.
func ParseKeyset(b []byte) (*Keyset, error) {
	if len(b) > MaxKeysetBytes {
		return nil, fmt.Errorf("keyset: %d bytes exceeds the limit of %d: %w", len(b), MaxKeysetBytes, ErrMalformed)
	}
	if err := strictKeysetJSON(b); err != nil {
		return nil, fmt.Errorf("keyset: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var ks Keyset
	if err := dec.Decode(&ks); err != nil {
		if errors.Is(err, ErrMalformed) || errors.Is(err, ErrUnsupportedVersion) || errors.Is(err, ErrUnknownAlgorithm) {
			return nil, fmt.Errorf("keyset: %w", err)
		}
		return nil, fmt.Errorf("keyset: %v: %w", err, ErrMalformed)
	}
	if dec.More() {
		return nil, fmt.Errorf("keyset: trailing data after the JSON object: %w", ErrMalformed)
	}
	if ks.Format != KeysetFormatV1 {
		return nil, fmt.Errorf("keyset: format %d (this build reads %d): %w", ks.Format, KeysetFormatV1, ErrUnsupportedVersion)
	}
	if err := ks.Validate(); err != nil {
		return nil, err
	}
	return &ks, nil
}

// Marshal returns the JSON form of ks, indented, with a final newline.
func (ks *Keyset) Marshal() ([]byte, error) {
	if err := ks.Validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(ks, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("keyset: %w", err)
	}
	return append(b, '\n'), nil
}

// Validate checks that ids are unique and non-zero, states are defined, there
// is exactly one primary when there is any DEK, and every wrapped key is
// valid. Errors wrap ErrMalformed.
func (ks *Keyset) Validate() error {
	if len(ks.DEKs) > MaxKeysetDEKs {
		return fmt.Errorf("keyset: %d DEKs exceeds the limit of %d: %w", len(ks.DEKs), MaxKeysetDEKs, ErrMalformed)
	}
	seen := make(map[uint32]bool, len(ks.DEKs))
	primaries := 0
	for i, e := range ks.DEKs {
		if e.ID == 0 {
			return fmt.Errorf("keyset: DEK %d has id 0: %w", i, ErrMalformed)
		}
		if seen[e.ID] {
			return fmt.Errorf("keyset: DEK id %08x appears twice: %w", e.ID, ErrMalformed)
		}
		seen[e.ID] = true
		if !e.State.Valid() {
			return fmt.Errorf("keyset: DEK %08x: unknown state %q: %w", e.ID, e.State, ErrMalformed)
		}
		if e.State == StatePrimary {
			primaries++
		}
		if e.Wrapped == nil {
			return fmt.Errorf("keyset: DEK %08x has no wrapped key: %w", e.ID, ErrMalformed)
		}
		if err := e.Wrapped.Validate(); err != nil {
			return fmt.Errorf("keyset: DEK %08x: %w", e.ID, err)
		}
	}
	if len(ks.DEKs) > 0 && primaries != 1 {
		return fmt.Errorf("keyset: %d primary DEKs, want exactly 1: %w", primaries, ErrMalformed)
	}
	return nil
}

// Entry returns the entry with id, or an error wrapping ErrKeyNotFound.
func (ks *Keyset) Entry(id uint32) (*KeysetEntry, error) {
	for i := range ks.DEKs {
		if ks.DEKs[i].ID == id {
			return &ks.DEKs[i], nil
		}
	}
	return nil, fmt.Errorf("keyset: no DEK %08x: %w", id, ErrKeyNotFound)
}

// Primary returns the primary entry, or an error wrapping ErrKeyNotFound if
// the keyset is empty.
func (ks *Keyset) Primary() (*KeysetEntry, error) {
	for i := range ks.DEKs {
		if ks.DEKs[i].State == StatePrimary {
			return &ks.DEKs[i], nil
		}
	}
	return nil, fmt.Errorf("keyset: no primary DEK: %w", ErrKeyNotFound)
}

// AddDEK generates a new DEK, wraps it with ring's primary provider bound to
// its id, and appends it as the new primary; the previous primary becomes
// decrypt-only. It returns the new entry's id. ks is unchanged on error.
func (ks *Keyset) AddDEK(ctx context.Context, ring *Keyring, now time.Time) (uint32, error) {
	if len(ks.DEKs) >= MaxKeysetDEKs {
		return 0, fmt.Errorf("keyset: already holds %d DEKs: %w", len(ks.DEKs), ErrMalformed)
	}
	id, err := ks.newID()
	if err != nil {
		return 0, err
	}
	e := KeysetEntry{ID: id, State: StatePrimary, Created: now.UTC().Truncate(time.Second)}
	dek, wk, err := ring.GenerateDEK(ctx, e.Context())
	if err != nil {
		return 0, fmt.Errorf("keyset: new DEK: %w", err)
	}
	dek.Zero()
	e.Wrapped = wk
	for i := range ks.DEKs {
		if ks.DEKs[i].State == StatePrimary {
			ks.DEKs[i].State = StateDecryptOnly
		}
	}
	ks.DEKs = append(ks.DEKs, e)
	return id, nil
}

func (ks *Keyset) newID() (uint32, error) {
	var b [4]byte
	for range 64 {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, fmt.Errorf("keyset: DEK id: %w", err)
		}
		id := binary.BigEndian.Uint32(b[:])
		if id == 0 {
			continue
		}
		if _, err := ks.Entry(id); err != nil {
			return id, nil
		}
	}
	return 0, errors.New("keyset: could not find a free DEK id")
}

// SetState changes a DEK's state. Making a DEK primary demotes the current
// primary to decrypt-only; the primary itself cannot be made decrypt-only or
// retired directly (promote another DEK first).
func (ks *Keyset) SetState(id uint32, s DEKState) error {
	if !s.Valid() {
		return fmt.Errorf("keyset: unknown state %q: %w", s, ErrMalformed)
	}
	e, err := ks.Entry(id)
	if err != nil {
		return err
	}
	if e.State == s {
		return nil
	}
	if e.State == StatePrimary {
		return fmt.Errorf("keyset: DEK %08x is the primary; make another DEK primary first: %w", id, ErrFailedPrecondition)
	}
	if s == StatePrimary {
		for i := range ks.DEKs {
			if ks.DEKs[i].State == StatePrimary {
				ks.DEKs[i].State = StateDecryptOnly
			}
		}
	}
	e.State = s
	return nil
}

// OpenFieldCipher unwraps every primary and decrypt-only DEK of ks with ring
// (retired ones are not loaded) and returns a FieldCipher over them. The
// primary must unwrap; a decrypt-only DEK that does not (its KEK version is
// disabled, its vault is down) does not stop the others: values under it fail
// to decrypt with that error, and [FieldCipher.Unavailable] lists it. The
// plaintext DEKs are zeroed before it returns.
func (ks *Keyset) OpenFieldCipher(ctx context.Context, ring *Keyring) (*FieldCipher, error) {
	p, err := ks.Primary()
	if err != nil {
		return nil, err
	}
	keys := make(map[uint32]DEK, len(ks.DEKs))
	unavailable := map[uint32]error{}
	defer func() {
		for _, k := range keys {
			k.Zero()
		}
	}()
	for i := range ks.DEKs {
		e := &ks.DEKs[i]
		if e.State == StateRetired {
			continue
		}
		dek, err := ring.Unwrap(ctx, e.Wrapped, e.Context())
		if err != nil {
			err = fmt.Errorf("keyset: DEK %08x: %w", e.ID, err)
			if e.ID == p.ID || ctx.Err() != nil {
				return nil, err
			}
			unavailable[e.ID] = err
			continue
		}
		keys[e.ID] = dek
	}
	f, err := NewFieldCipher(p.ID, keys)
	if err != nil {
		return nil, err
	}
	if len(unavailable) > 0 {
		f.unavailable = unavailable
	}
	return f, nil
}

// keysetFields are the exact field names of the keyset's two object levels.
var keysetFields = [2]map[string]bool{
	{"format": true, "deks": true},
	{"id": true, "state": true, "created": true, "wrapped": true},
}

// strictKeysetJSON refuses what encoding/json would let through: duplicate
// field names (the last would win) and field names in another case (they
// would match case-insensitively). A keyset is read by tools and people
// alike; both must see the same thing.
func strictKeysetJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	type frame struct {
		object bool
		seen   map[string]bool
		key    bool // the next token is a field name
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return fmt.Errorf("%v: %w", err, ErrMalformed)
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if name, ok := tok.(string); ok && top != nil && top.object && top.key {
			if top.seen[name] {
				return fmt.Errorf("field %q appears twice: %w", name, ErrMalformed)
			}
			top.seen[name] = true
			objects := 0
			for _, f := range stack {
				if f.object {
					objects++
				}
			}
			if objects <= len(keysetFields) && !keysetFields[objects-1][name] {
				return fmt.Errorf("unknown field %q (names are case-sensitive): %w", name, ErrMalformed)
			}
			top.key = false
			continue
		}
		if top != nil && top.object {
			top.key = true // after this value comes the next field name
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{object: true, seen: map[string]bool{}, key: true})
		case json.Delim('['):
			stack = append(stack, &frame{})
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			if len(stack) > 0 && stack[len(stack)-1].object {
				stack[len(stack)-1].key = true
			}
		}
	}
}
