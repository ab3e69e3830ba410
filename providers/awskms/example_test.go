package awskms_test

import (
	"context"
	"fmt"
	"log"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/awskms"
)

// A keyring whose primary KEK is a KMS key: new DEKs come from KMS
// GenerateDataKey, bound to an encryption context.
func ExampleNew() {
	ctx := context.Background()
	p, err := awskms.New(ctx, awskms.Config{KeyID: "alias/app-data", Region: "eu-west-2"})
	if err != nil {
		log.Fatal(err)
	}
	ring, err := core.NewKeyring(p)
	if err != nil {
		log.Fatal(err)
	}
	dek, wk, err := ring.GenerateDEK(ctx, core.Context{"table": "users", "column": "email"})
	if err != nil {
		log.Fatal(err)
	}
	defer dek.Zero()
	fmt.Println(wk) // keyctl-wk1:... : store it next to the data
}

// Adopting a data key that a service wrapped with KMS before it used keyctl.
func ExampleProvider_ImportCiphertext() {
	ctx := context.Background()
	p, err := awskms.New(ctx, awskms.Config{KeyID: "alias/app-data", Region: "eu-west-2"})
	if err != nil {
		log.Fatal(err)
	}
	var blob []byte // the CiphertextBlob of KMS Encrypt or GenerateDataKey(AES_256)
	s, err := p.ImportCiphertext(ctx, blob, core.Context{"service": "billing"})
	if err != nil {
		log.Fatal(err)
	}
	wk := &core.WrappedKey{Stanzas: []core.Stanza{s}}
	fmt.Println(wk)
}
