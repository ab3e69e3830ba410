package bench

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	wrapping "github.com/hashicorp/go-kms-wrapping/v2"
	gkwaead "github.com/hashicorp/go-kms-wrapping/v2/aead"
	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
	"google.golang.org/protobuf/proto"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/localfile"
)

// rotate is the round number bench/run passes: it sets the order in which
// the implementations of one workload run, so that no implementation always
// goes first after a setup, or always follows the same neighbour (a
// go-kms-wrapping run leaves the most garbage behind).
var rotate = flag.Int("rotate", 0, "round number: runs the implementations of each workload in the order for this round")

// fieldImpl is one library doing field encryption: one database value in,
// bytes for the column out, with a long-lived key and associated data.
type fieldImpl struct {
	name    string
	encrypt func(pt, ad []byte) ([]byte, error)
	decrypt func(ct, ad []byte) ([]byte, error)
}

// envelopeImpl is one library doing envelope encryption of one value: a
// fresh DEK per value, wrapped by a long-lived KEK, and bytes out that hold
// both the wrapped DEK and the value.
type envelopeImpl struct {
	name    string
	encrypt func(pt, ad []byte) ([]byte, error)
	decrypt func(ct, ad []byte) ([]byte, error)
}

var implNames = []string{"raw", "keyctl", "tink", "gokms"}

// ordered returns the implementation names in the order for round *rotate:
// rounds 0-3 start at each name in turn, rounds 4-7 do the same backwards,
// and so on, so every name both precedes and follows every other.
func ordered() []string {
	n := len(implNames)
	r := max(*rotate, 0)
	out := make([]string, n)
	for i := range out {
		out[i] = implNames[(r+i)%n]
	}
	if (r/n)%2 == 1 {
		slices.Reverse(out)
	}
	return out
}

// newRaw is the floor: crypto/cipher AES-256-GCM with a cached cipher.AEAD,
// a 12-byte crypto/rand nonce and one output allocation, nonce || ct || tag.
func newRaw(tb testing.TB) fieldImpl {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	blk, err := aes.NewCipher(k)
	if err != nil {
		tb.Fatal(err)
	}
	a, err := cipher.NewGCM(blk)
	if err != nil {
		tb.Fatal(err)
	}
	return fieldImpl{
		name: "raw",
		encrypt: func(pt, ad []byte) ([]byte, error) {
			out := make([]byte, 12, 12+len(pt)+16)
			if _, err := rand.Read(out); err != nil {
				return nil, err
			}
			return a.Seal(out, out, pt, ad), nil
		},
		decrypt: func(ct, ad []byte) ([]byte, error) {
			if len(ct) < 12+16 {
				return nil, errors.New("short")
			}
			return a.Open(nil, ct[:12], ct[12:], ad)
		},
	}
}

// newKeyring returns a keyring over keyctl's local key-file provider. The
// file is read once; after that the KEK lives in memory and wrap and unwrap
// never touch the disk.
func newKeyring(tb testing.TB) *core.Keyring {
	p, err := localfile.Create(filepath.Join(tb.TempDir(), "kek.json"), localfile.CreateOptions{KeyID: "bench"})
	if err != nil {
		tb.Fatal(err)
	}
	ring, err := core.NewKeyring(p)
	if err != nil {
		tb.Fatal(err)
	}
	return ring
}

// newKeyctl is keyctl as a service uses it: a keyset with one primary DEK,
// wrapped by the local key-file KEK, unwrapped once into a core.FieldCipher.
func newKeyctl(tb testing.TB) fieldImpl {
	ctx := context.Background()
	ring := newKeyring(tb)
	ks := core.NewKeyset()
	if _, err := ks.AddDEK(ctx, ring, time.Now()); err != nil {
		tb.Fatal(err)
	}
	f, err := ks.OpenFieldCipher(ctx, ring)
	if err != nil {
		tb.Fatal(err)
	}
	return fieldImpl{name: "keyctl", encrypt: f.Encrypt, decrypt: f.Decrypt}
}

func newTinkAEAD(tb testing.TB) tink.AEAD {
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		tb.Fatal(err)
	}
	a, err := aead.New(h)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// newTink is a tink-go keyset handle with one AES256_GCM key (the TINK
// output prefix: 5 bytes naming the key) and its AEAD primitive.
func newTink(tb testing.TB) fieldImpl {
	a := newTinkAEAD(tb)
	return fieldImpl{name: "tink", encrypt: a.Encrypt, decrypt: a.Decrypt}
}

func newGKWWrapper(tb testing.TB) *gkwaead.Wrapper {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	w := gkwaead.NewWrapper()
	if err := w.SetAesGcmKeyBytes(k); err != nil {
		tb.Fatal(err)
	}
	if _, err := w.SetConfig(context.Background(), wrapping.WithKeyId("bench")); err != nil {
		tb.Fatal(err)
	}
	return w
}

// newGoKMS is go-kms-wrapping's aead wrapper. Its Encrypt returns a
// *wrapping.BlobInfo; a database column needs bytes, so the value stored is
// proto.Marshal of that BlobInfo, and decryption starts with proto.Unmarshal.
func newGoKMS(tb testing.TB) fieldImpl {
	ctx := context.Background()
	w := newGKWWrapper(tb)
	return fieldImpl{
		name: "gokms",
		encrypt: func(pt, ad []byte) ([]byte, error) {
			blob, err := w.Encrypt(ctx, pt, wrapping.WithAad(ad))
			if err != nil {
				return nil, err
			}
			return proto.Marshal(blob)
		},
		decrypt: func(ct, ad []byte) ([]byte, error) {
			var blob wrapping.BlobInfo
			if err := proto.Unmarshal(ct, &blob); err != nil {
				return nil, err
			}
			if len(blob.Ciphertext) < 12 { // the wrapper slices [:12] unchecked
				return nil, errors.New("short")
			}
			return w.Decrypt(ctx, &blob, wrapping.WithAad(ad))
		},
	}
}

func newField(tb testing.TB, name string) fieldImpl {
	switch name {
	case "raw":
		return newRaw(tb)
	case "keyctl":
		return newKeyctl(tb)
	case "tink":
		return newTink(tb)
	case "gokms":
		return newGoKMS(tb)
	}
	tb.Fatalf("unknown implementation %q", name)
	return fieldImpl{}
}

// The envelope workload: encrypt one value under a fresh DEK that a KEK
// wraps, and produce one byte string holding both.

// newRawEnvelope is the floor: 32 bytes from crypto/rand, an AES-256-GCM
// instance for it, the value sealed under it, the DEK sealed under a cached
// KEK AEAD, and nonce || wrapped DEK || nonce || ciphertext in one allocation.
func newRawEnvelope(tb testing.TB) envelopeImpl {
	kek := newRawKEK(tb)
	const wrapped = 12 + 32 + 16
	return envelopeImpl{
		name: "raw",
		encrypt: func(pt, ad []byte) ([]byte, error) {
			var dek [32]byte
			if _, err := rand.Read(dek[:]); err != nil {
				return nil, err
			}
			blk, err := aes.NewCipher(dek[:])
			if err != nil {
				return nil, err
			}
			a, err := cipher.NewGCM(blk)
			if err != nil {
				return nil, err
			}
			out := make([]byte, 12, wrapped+12+len(pt)+16)
			if _, err := rand.Read(out); err != nil {
				return nil, err
			}
			out = kek.Seal(out, out, dek[:], nil)
			out = out[:wrapped+12]
			if _, err := rand.Read(out[wrapped:]); err != nil {
				return nil, err
			}
			clear(dek[:])
			return a.Seal(out, out[wrapped:], pt, ad), nil
		},
		decrypt: func(ct, ad []byte) ([]byte, error) {
			if len(ct) < wrapped+12+16 {
				return nil, errors.New("short")
			}
			dek, err := kek.Open(nil, ct[:12], ct[12:wrapped], nil)
			if err != nil {
				return nil, err
			}
			blk, err := aes.NewCipher(dek)
			clear(dek)
			if err != nil {
				return nil, err
			}
			a, err := cipher.NewGCM(blk)
			if err != nil {
				return nil, err
			}
			return a.Open(nil, ct[wrapped:wrapped+12], ct[wrapped+12:], ad)
		},
	}
}

func newRawKEK(tb testing.TB) cipher.AEAD {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	blk, err := aes.NewCipher(k)
	if err != nil {
		tb.Fatal(err)
	}
	a, err := cipher.NewGCM(blk)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// newKeyctlEnvelope: core.Keyring.GenerateDEK with the local key-file
// provider (KEK in memory: a crypto/rand DEK sealed with AES-256-GCM, the
// encryption context bound), a core.FieldCipher over that one DEK, the value
// encrypted with it, and the binary WrappedKey record followed by the field
// ciphertext, after a 2-byte length. Decryption parses the record, unwraps
// through the keyring (routing by the record's provider and key id) and
// builds a FieldCipher again.
func newKeyctlEnvelope(tb testing.TB) envelopeImpl {
	ctx := context.Background()
	ring := newKeyring(tb)
	ec := core.Context{core.DEKContextKey: fmt.Sprintf("%08x", 1)}
	return envelopeImpl{
		name: "keyctl",
		encrypt: func(pt, ad []byte) ([]byte, error) {
			dek, wk, err := ring.GenerateDEK(ctx, ec)
			if err != nil {
				return nil, err
			}
			f, err := core.NewFieldCipher(1, map[uint32]core.DEK{1: dek})
			dek.Zero()
			if err != nil {
				return nil, err
			}
			wkb, err := wk.MarshalBinary()
			if err != nil {
				return nil, err
			}
			ct, err := f.Encrypt(pt, ad)
			if err != nil {
				return nil, err
			}
			out := make([]byte, 0, 2+len(wkb)+len(ct))
			out = binary.BigEndian.AppendUint16(out, uint16(len(wkb)))
			out = append(out, wkb...)
			return append(out, ct...), nil
		},
		decrypt: func(ct, ad []byte) ([]byte, error) {
			if len(ct) < 2 {
				return nil, errors.New("short")
			}
			n := int(binary.BigEndian.Uint16(ct))
			if len(ct) < 2+n {
				return nil, errors.New("short")
			}
			wk, err := core.ParseWrappedKey(ct[2 : 2+n])
			if err != nil {
				return nil, err
			}
			dek, err := ring.Unwrap(ctx, wk, ec)
			if err != nil {
				return nil, err
			}
			f, err := core.NewFieldCipher(1, map[uint32]core.DEK{1: dek})
			dek.Zero()
			if err != nil {
				return nil, err
			}
			return f.Decrypt(ct[2+n:], ad)
		},
	}
}

// newTinkEnvelope: tink-go's KMS envelope AEAD (aead.NewKMSEnvelopeAEAD2)
// with an AES256_GCM DEK template and, as the "remote" KEK, an in-memory
// AES256_GCM keyset AEAD. Per value it makes a new key through the key
// manager registry (a serialized AesGcmKey proto), encrypts that under the
// KEK, builds a primitive from it and writes len || encrypted DEK || payload.
func newTinkEnvelope(tb testing.TB) envelopeImpl {
	e := aead.NewKMSEnvelopeAEAD2(aead.AES256GCMKeyTemplate(), newTinkAEAD(tb))
	return envelopeImpl{name: "tink", encrypt: e.Encrypt, decrypt: e.Decrypt}
}

// newGoKMSEnvelope: go-kms-wrapping's wrapping.EnvelopeEncrypt (a fresh
// 32-byte DEK and IV, the value sealed under it) with the aead wrapper as
// KEK wrapping the DEK, assembled into a BlobInfo the way its KMS wrappers
// do (Ciphertext, Iv, KeyInfo.WrappedKey) and proto.Marshal'ed to bytes.
func newGoKMSEnvelope(tb testing.TB) envelopeImpl {
	ctx := context.Background()
	kek := newGKWWrapper(tb)
	return envelopeImpl{
		name: "gokms",
		encrypt: func(pt, ad []byte) ([]byte, error) {
			env, err := wrapping.EnvelopeEncrypt(pt, wrapping.WithAad(ad))
			if err != nil {
				return nil, err
			}
			wk, err := kek.Encrypt(ctx, env.Key)
			if err != nil {
				return nil, err
			}
			clear(env.Key)
			return proto.Marshal(&wrapping.BlobInfo{
				Ciphertext: env.Ciphertext,
				Iv:         env.Iv,
				KeyInfo: &wrapping.KeyInfo{
					KeyId:      wk.KeyInfo.KeyId,
					WrappedKey: wk.Ciphertext,
				},
			})
		},
		decrypt: func(ct, ad []byte) ([]byte, error) {
			var blob wrapping.BlobInfo
			if err := proto.Unmarshal(ct, &blob); err != nil {
				return nil, err
			}
			if blob.KeyInfo == nil || len(blob.KeyInfo.WrappedKey) < 12 {
				return nil, errors.New("no wrapped key")
			}
			dek, err := kek.Decrypt(ctx, &wrapping.BlobInfo{Ciphertext: blob.KeyInfo.WrappedKey})
			if err != nil {
				return nil, err
			}
			pt, err := wrapping.EnvelopeDecrypt(&wrapping.EnvelopeInfo{Key: dek, Iv: blob.Iv, Ciphertext: blob.Ciphertext}, wrapping.WithAad(ad))
			clear(dek)
			return pt, err
		},
	}
}

func newEnvelope(tb testing.TB, name string) envelopeImpl {
	switch name {
	case "raw":
		return newRawEnvelope(tb)
	case "keyctl":
		return newKeyctlEnvelope(tb)
	case "tink":
		return newTinkEnvelope(tb)
	case "gokms":
		return newGoKMSEnvelope(tb)
	}
	tb.Fatalf("unknown implementation %q", name)
	return envelopeImpl{}
}
