package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/keyctl/keyctl/core"
)

type encryptResult struct {
	Ciphertext string `json:"ciphertext"`
	DEKID      string `json:"dek_id"`
}

type decryptResult struct {
	Plaintext       *string `json:"plaintext,omitempty"`
	PlaintextBase64 *string `json:"plaintext_base64,omitempty"`
	DEKID           string  `json:"dek_id"`
}

func (a *app) encryptCommand() *cobra.Command {
	var ad string
	c := &cobra.Command{
		Use:   "encrypt --ad STRING [VALUE|-]",
		Short: "Encrypt one value with the keyset's primary DEK",
		Long: `Encrypt one value (VALUE, or stdin read as-is when VALUE is absent or "-")
with the primary DEK of the configured keyset, and print the field ciphertext
in its text form (unpadded base64url). --ad is the associated data (for
example "users.email:42"): decrypt must be given the same, so a value copied
into another row does not decrypt. --ad is required; --ad "" binds nothing.

Prefer stdin for real values: a VALUE argument is visible to other users in
the process list and stays in shell history.`,
		Example: `  printf %s "$email" | keyctl encrypt --ad users.email:42
  keyctl encrypt --ad test:1 not-a-secret`,
		Args: cobra.MaximumNArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			var pt []byte
			if len(args) > 0 && args[0] != "-" {
				pt = []byte(args[0])
			} else {
				var err error
				pt, _, err = a.readInput("-", core.MaxFieldPlaintext, func(n int) error {
					return fmt.Errorf("value over %d bytes: %w", n, core.ErrMalformed)
				})
				if err != nil {
					return err
				}
			}
			defer clear(pt)
			fc, err := a.fieldCipher()
			if err != nil {
				return err
			}
			ct, err := fc.Encrypt(pt, []byte(ad))
			if err != nil {
				return err
			}
			text := core.EncodeFieldText(ct)
			if a.jsonOut {
				a.emitJSON(encryptResult{Ciphertext: text, DEKID: fmt.Sprintf("%08x", fc.PrimaryID())})
				return nil
			}
			a.printf("%s\n", text)
			return nil
		}),
	}
	c.Flags().StringVar(&ad, "ad", "", "associated data bound to the value (required; the same must be given to decrypt)")
	_ = c.MarkFlagRequired("ad")
	return c
}

func (a *app) decryptCommand() *cobra.Command {
	var ad string
	c := &cobra.Command{
		Use:   "decrypt --ad STRING [TEXT|-]",
		Short: "Decrypt one field ciphertext with the keyset",
		Long: `Decrypt one field ciphertext (TEXT, or stdin when TEXT is absent or "-"; text
or binary form) with the DEK of the configured keyset that its header names,
and print the plaintext exactly, with no newline added. --ad must be the
associated data given to encrypt.`,
		Example: `  keyctl decrypt --ad users.email:42 AQAAAAH...`,
		Args:    cobra.MaximumNArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			var ct []byte
			if len(args) > 0 && args[0] != "-" {
				b, err := core.DecodeFieldText(args[0])
				if err != nil {
					return err
				}
				ct = b
			} else {
				b, _, err := a.readInput("-", core.MaxFieldText+64, func(n int) error {
					return fmt.Errorf("input over %d bytes: %w", n, core.ErrMalformed)
				})
				if err != nil {
					return err
				}
				if len(b) > 0 && b[0] == core.FieldFormatV1 {
					ct = b // binary form
				} else if ct, err = core.DecodeFieldText(string(bytes.TrimSpace(b))); err != nil {
					return fmt.Errorf("stdin: %w", err)
				}
			}
			h, err := core.ParseFieldHeader(ct)
			if err != nil {
				return err
			}
			fc, err := a.fieldCipher()
			if err != nil {
				return err
			}
			pt, err := fc.Decrypt(ct, []byte(ad))
			if err != nil {
				return err
			}
			defer clear(pt)
			if a.jsonOut {
				res := decryptResult{DEKID: fmt.Sprintf("%08x", h.DEKID)}
				if utf8.Valid(pt) {
					s := string(pt)
					res.Plaintext = &s
				} else {
					s := base64.StdEncoding.EncodeToString(pt)
					res.PlaintextBase64 = &s
				}
				a.emitJSON(res)
				return nil
			}
			_, _ = a.stdout.Write(pt)
			return nil
		}),
	}
	c.Flags().StringVar(&ad, "ad", "", "associated data given to encrypt (required)")
	_ = c.MarkFlagRequired("ad")
	return c
}
