package core

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strings"
	"sync/atomic"
)

// Field ciphertext format, version 1 (docs/format.md):
//
//	version (1 byte, 0x01) || DEK id (4 bytes, big-endian) || nonce (12 bytes) || AES-256-GCM ciphertext || tag (16 bytes)
//
// The associated data passed by the caller (table, column, row key) is bound
// by GCM but not stored.
const (
	// FieldFormatV1 is the version byte of the field ciphertext format.
	FieldFormatV1 = 0x01
	// FieldHeaderLen is the length of version, DEK id and nonce.
	FieldHeaderLen = 1 + 4 + fieldNonceLen
	// FieldOverhead is how much longer a field ciphertext is than its
	// plaintext.
	FieldOverhead = FieldHeaderLen + fieldTagLen
	// MaxFieldPlaintext bounds one field value (64 MiB).
	MaxFieldPlaintext = 64 << 20
	// MaxFieldText is the length of the text form of the largest field
	// ciphertext.
	MaxFieldText = ((MaxFieldPlaintext+FieldOverhead)*4 + 2) / 3

	fieldNonceLen = 12
	fieldTagLen   = 16
)

// FieldHeader is the unencrypted part of a field ciphertext, as read by
// [ParseFieldHeader].
type FieldHeader struct {
	Version byte
	DEKID   uint32
	Nonce   [fieldNonceLen]byte
	// CiphertextLen is the length of the encrypted value and its tag.
	CiphertextLen int
}

// ParseFieldHeader reads the header of a binary field ciphertext without
// touching any key. Errors wrap ErrMalformed or ErrUnsupportedVersion.
func ParseFieldHeader(ct []byte) (FieldHeader, error) {
	var h FieldHeader
	if len(ct) == 0 {
		return h, fmt.Errorf("field ciphertext: empty: %w", ErrMalformed)
	}
	if ct[0] != FieldFormatV1 {
		return h, fmt.Errorf("field ciphertext: format version %d (this build reads %d): %w", ct[0], FieldFormatV1, ErrUnsupportedVersion)
	}
	if len(ct) < FieldOverhead {
		return h, fmt.Errorf("field ciphertext: %d bytes, shorter than the minimum %d: %w", len(ct), FieldOverhead, ErrMalformed)
	}
	if len(ct) > MaxFieldPlaintext+FieldOverhead {
		return h, fmt.Errorf("field ciphertext: %d bytes exceeds the limit of %d: %w", len(ct), MaxFieldPlaintext+FieldOverhead, ErrMalformed)
	}
	h.Version = ct[0]
	h.DEKID = binary.BigEndian.Uint32(ct[1:5])
	if h.DEKID == 0 {
		return h, fmt.Errorf("field ciphertext: DEK id 0 is reserved: %w", ErrMalformed)
	}
	copy(h.Nonce[:], ct[5:FieldHeaderLen])
	h.CiphertextLen = len(ct) - FieldHeaderLen
	return h, nil
}

var fieldB64 = base64.RawURLEncoding.Strict()

// EncodeFieldText returns the text form of a field ciphertext: unpadded
// base64url, safe for a TEXT column, JSON or a terminal.
func EncodeFieldText(ct []byte) string { return fieldB64.EncodeToString(ct) }

// DecodeFieldText parses the text form of a field ciphertext. It checks the
// length before decoding. Errors wrap ErrMalformed.
func DecodeFieldText(s string) ([]byte, error) {
	if len(s) > MaxFieldText {
		return nil, fmt.Errorf("field ciphertext: text form of %d bytes exceeds the limit: %w", len(s), ErrMalformed)
	}
	// encoding/base64 skips \r and \n; the canonical form has neither.
	if strings.ContainsAny(s, "\r\n") {
		return nil, fmt.Errorf("field ciphertext: line break inside the text form: %w", ErrMalformed)
	}
	b, err := fieldB64.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("field ciphertext: text form is not canonical unpadded base64url: %w", ErrMalformed)
	}
	return b, nil
}

// fieldKey is one DEK ready for use.
type fieldKey struct {
	id   uint32
	aead cipher.AEAD
}

// FieldCipher encrypts and decrypts single database values with the DEKs of
// a keyset: new values under the primary DEK, old values under whichever DEK
// their header names. It holds the DEKs as ready AES-GCM instances, so no
// vault is called per value. It is safe for concurrent use.
type FieldCipher struct {
	primary atomic.Pointer[fieldKey]
	keys    map[uint32]*fieldKey // the DEKs by id, when there are many
	few     []*fieldKey          // the DEKs when there are few: a scan beats a map

	unavailable map[uint32]error // keyset DEKs that could not be unwrapped
}

// Unavailable returns the keyset DEKs that OpenFieldCipher could not unwrap,
// with the reason; values under them fail to decrypt. It is empty when every
// DEK loaded.
func (f *FieldCipher) Unavailable() map[uint32]error {
	out := make(map[uint32]error, len(f.unavailable))
	for id, err := range f.unavailable {
		out[id] = err
	}
	return out
}

func (f *FieldCipher) lookup(id uint32) *fieldKey {
	if f.few != nil {
		for _, k := range f.few {
			if k.id == id {
				return k
			}
		}
		return nil
	}
	return f.keys[id]
}

// NewFieldCipher returns a FieldCipher that encrypts with the DEK primary and
// decrypts with any DEK of keys (which must include primary). The DEK bytes
// are copied into AES key schedules; the caller still owns and should zero
// keys.
func NewFieldCipher(primary uint32, keys map[uint32]DEK) (*FieldCipher, error) {
	f := &FieldCipher{}
	all := make([]*fieldKey, 0, len(keys))
	var p *fieldKey
	for id, dek := range keys {
		if id == 0 {
			return nil, fmt.Errorf("field cipher: DEK id 0 is reserved: %w", ErrMalformed)
		}
		if err := dek.Validate(); err != nil {
			return nil, fmt.Errorf("field cipher: DEK %08x: %w", id, err)
		}
		block, err := aes.NewCipher(dek)
		if err != nil {
			return nil, fmt.Errorf("field cipher: DEK %08x: %w", id, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("field cipher: DEK %08x: %w", id, err)
		}
		k := &fieldKey{id: id, aead: aead}
		all = append(all, k)
		if id == primary {
			p = k
		}
	}
	if p == nil {
		return nil, fmt.Errorf("field cipher: primary DEK %08x is not among the keys: %w", primary, ErrKeyNotFound)
	}
	if len(all) <= 8 {
		f.few = all
	} else {
		f.keys = make(map[uint32]*fieldKey, len(all))
		for _, k := range all {
			f.keys[k.id] = k
		}
	}
	f.primary.Store(p)
	return f, nil
}

// PrimaryID returns the id of the DEK that Encrypt uses.
func (f *FieldCipher) PrimaryID() uint32 { return f.primary.Load().id }

// Encrypt seals plaintext under the primary DEK with a fresh random nonce,
// binding associatedData (for example table, column and row key, so that a
// value copied into another row fails to decrypt). The result is the binary
// field ciphertext, len(plaintext)+FieldOverhead bytes, in one allocation.
func (f *FieldCipher) Encrypt(plaintext, associatedData []byte) ([]byte, error) {
	if len(plaintext) > MaxFieldPlaintext {
		return nil, fmt.Errorf("field encrypt: %d bytes exceeds the limit of %d: %w", len(plaintext), MaxFieldPlaintext, ErrMalformed)
	}
	k := f.primary.Load()
	out := make([]byte, FieldHeaderLen, len(plaintext)+FieldOverhead)
	out[0] = FieldFormatV1
	binary.BigEndian.PutUint32(out[1:5], k.id)
	nonce := out[5:FieldHeaderLen]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("field encrypt: nonce: %w", err)
	}
	return k.aead.Seal(out, nonce, plaintext, associatedData), nil
}

// Decrypt opens a binary field ciphertext with the DEK its header names and
// the same associated data given to Encrypt. Errors wrap ErrMalformed or
// ErrUnsupportedVersion (bad header), ErrKeyNotFound (the DEK is not in this
// cipher's keyset, or was retired) or ErrDecryptFailed (altered ciphertext or
// other associated data; the error does not say which byte).
func (f *FieldCipher) Decrypt(ciphertext, associatedData []byte) ([]byte, error) {
	if len(ciphertext) < FieldOverhead || ciphertext[0] != FieldFormatV1 || len(ciphertext) > MaxFieldPlaintext+FieldOverhead {
		_, err := ParseFieldHeader(ciphertext) // the slow path says what is wrong
		return nil, err
	}
	id := binary.BigEndian.Uint32(ciphertext[1:5])
	k := f.lookup(id)
	if k == nil {
		if id == 0 {
			return nil, fmt.Errorf("field ciphertext: DEK id 0 is reserved: %w", ErrMalformed)
		}
		if err, ok := f.unavailable[id]; ok {
			return nil, fmt.Errorf("field decrypt: %w", err)
		}
		return nil, fmt.Errorf("field decrypt: DEK %08x is not in the keyset (unknown or retired): %w", id, ErrKeyNotFound)
	}
	out, err := k.aead.Open(nil, ciphertext[5:FieldHeaderLen], ciphertext[FieldHeaderLen:], associatedData)
	if err != nil {
		return nil, fmt.Errorf("field decrypt with DEK %08x: %w", id, ErrDecryptFailed)
	}
	return out, nil
}

// DEKID returns the id of the DEK that encrypted ciphertext, reading only the
// header.
func DEKID(ciphertext []byte) (uint32, error) {
	h, err := ParseFieldHeader(ciphertext)
	return h.DEKID, err
}
