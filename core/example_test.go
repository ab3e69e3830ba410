package core_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/localfile"
)

// Example shows the pattern keyctl exists for, embedded in a Go service: a
// KEK in a vault (here a local key file), a keyset of wrapped DEKs unwrapped
// once at start, and field encryption per request without calling the vault.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "keyctl-example")
	defer os.RemoveAll(dir)

	// Once: a KEK and a keyset with one primary DEK (keyctl init does this).
	kek, err := localfile.Create(filepath.Join(dir, "kek.json"), localfile.CreateOptions{KeyID: "app"})
	if err != nil {
		log.Fatal(err)
	}
	ring, err := core.NewKeyring(kek)
	if err != nil {
		log.Fatal(err)
	}
	ks := core.NewKeyset()
	if _, err := ks.AddDEK(ctx, ring, time.Now()); err != nil {
		log.Fatal(err)
	}

	// At service start: unwrap the keyset's DEKs once.
	fields, err := ks.OpenFieldCipher(ctx, ring)
	if err != nil {
		log.Fatal(err)
	}

	// Per request: no vault call. The associated data ties the value to its row.
	ct, err := fields.Encrypt([]byte("jane@example.com"), []byte("users|email|42"))
	if err != nil {
		log.Fatal(err)
	}
	pt, err := fields.Decrypt(ct, []byte("users|email|42"))
	fmt.Println(string(pt), err)

	// Copied into another row, the value no longer decrypts.
	_, err = fields.Decrypt(ct, []byte("users|email|43"))
	fmt.Println(err != nil)

	// The KEK rotates: the DEK, and so every encrypted row, is unaffected.
	if _, err := kek.RotateKey(ctx); err != nil {
		log.Fatal(err)
	}
	again, _ := ks.OpenFieldCipher(ctx, ring)
	pt, err = again.Decrypt(ct, []byte("users|email|42"))
	fmt.Println(string(pt), err)
	// Output:
	// jane@example.com <nil>
	// true
	// jane@example.com <nil>
}
