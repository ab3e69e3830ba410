package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"

	"github.com/spf13/cobra"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/awskms"
)

// maxImportInput bounds the input of keyctl import: the base64 form of the
// largest CiphertextBlob KMS accepts (6144 bytes), with room for line
// breaks.
const maxImportInput = 16 << 10

// Input encodings of keyctl import.
const (
	importAuto   = "auto"
	importRaw    = "raw"
	importBase64 = "base64"
)

type importResult struct {
	WrappedKey string     `json:"wrapped_key"`
	Out        string     `json:"out,omitempty"`
	Provider   string     `json:"provider"`
	Encoding   string     `json:"encoding"`
	Wraps      []wrapInfo `json:"wraps"`
}

func (a *app) importCommand() *cobra.Command {
	var provName, out, encoding string
	var ctxPairs []string
	c := &cobra.Command{
		Use:   "import [FILE|-] [--provider NAME] [--context k=v ...] [--encoding auto|raw|base64] [--out FILE]",
		Short: "Adopt an AWS KMS CiphertextBlob made outside keyctl as a wrapped key",
		Long: `Turn a KMS CiphertextBlob of a 32-byte data key, made outside keyctl (KMS
Encrypt of the key, or the CiphertextBlob of GenerateDataKey with KeySpec
AES_256), into a keyctl wrapped key for an awskms provider of the
configuration (--provider NAME, default the keyring primary). From then on
'keyctl unwrap' opens it and 'keyctl rewrap' moves it to any provider.

The blob is read from FILE or stdin, as raw bytes or base64 (what
'aws kms encrypt --query CiphertextBlob --output text' prints); --encoding
auto (the default) takes input made only of base64 characters as base64.
--context must give the EncryptionContext the blob was made with, as
key=value pairs; it is bound to the wrapped key as its context.

The wrapped key records the provider's key id and, as its KEK version, the key
ARN KMS reports for that key id. Before anything is printed or written, keyctl
checks the blob by unwrapping it through the provider (KMS Decrypt with the
key id and the context): a blob under another key, with another context, or
altered, is refused (status 2). The data key is never printed.

Prints the text form (keyctl-wk1:...) and a newline, or with --out writes it to
FILE atomically (mode 0600; an existing FILE is refused).`,
		Example: `  aws kms encrypt --key-id alias/app-data --plaintext fileb://dek.bin \
      --encryption-context service=billing --query CiphertextBlob --output text > blob.b64
  keyctl import blob.b64 --provider kms --context service=billing --out billing.wk
  keyctl import --encoding raw < blob.bin > app.wk`,
		Args: cobra.MaximumNArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if out == "-" {
				return usagef("import: --out - is not stdout; leave --out out to print the wrapped key")
			}
			switch encoding {
			case importAuto, importRaw, importBase64:
			default:
				return usagef("import: --encoding %q: want auto, raw or base64", encoding)
			}
			ec, err := parseContext(ctxPairs)
			if err != nil {
				return err
			}
			name, err := a.providerFlagName(provName)
			if err != nil {
				return err
			}
			cfg, err := a.config()
			if err != nil {
				return err
			}
			pc, ok := cfg.Provider(name)
			if !ok {
				return withHint(usagef("import: no provider named %q in %s", name, cfg.Path), "configured providers: "+providerNames(cfg))
			}
			if pc.Type != awskms.Type {
				return withHint(usagef("import: provider %q is of type %s; import adopts AWS KMS CiphertextBlobs and needs a provider of type %s", name, pc.Type, awskms.Type),
					"pass --provider NAME of an awskms provider block; configured providers: "+providerNames(cfg))
			}
			if out != "" && fileExists(out) {
				return withHint(existsError(out, ""), "choose another file")
			}
			in, src, err := a.readInput(argOr(args, ""), maxImportInput, func(n int) error {
				return fmt.Errorf("input over %d bytes (KMS ciphertext blobs are at most 6144 bytes): %w", n, core.ErrMalformed)
			})
			if err != nil {
				return err
			}
			blob, enc, err := decodeBlob(in, encoding)
			if err != nil {
				return fmt.Errorf("import %s: %w", src, err)
			}
			p, err := a.provider(name)
			if err != nil {
				return err
			}
			ref := p.Ref()
			version, err := p.CurrentVersion(a.ctx)
			if err != nil {
				return fmt.Errorf("import: provider %q (%s): %w", name, ref, err)
			}
			s := core.Stanza{Provider: awskms.Type, KeyID: ref.KeyID, KeyVersion: version, Algorithm: core.AlgAWSKMS, Data: blob}
			if err := s.Validate(); err != nil {
				return fmt.Errorf("import %s: %w", src, err)
			}
			// The check: the blob must open under this key with this
			// context, and hold a 32-byte key.
			dek, err := p.UnwrapKey(a.ctx, s, ec)
			if err != nil {
				err = fmt.Errorf("import %s: provider %q (%s): %w", src, name, ref, err)
				if errors.Is(err, core.ErrUnwrapFailed) {
					return withHint(err, fmt.Sprintf("the blob was altered, was made under another KMS key than %s, or --context differs from the EncryptionContext it was made with", ref.KeyID))
				}
				return err
			}
			n := len(dek)
			dek.Zero()
			if n != core.DEKSize {
				return fmt.Errorf("import %s: the blob holds a %d-byte key; keyctl data keys are %d-byte AES-256 keys: %w", src, n, core.DEKSize, core.ErrMalformed)
			}
			wk := &core.WrappedKey{Stanzas: []core.Stanza{s}}
			text, err := wk.MarshalText()
			if err != nil {
				return err
			}
			data := append(bytes.Clone(text), '\n')
			if out != "" {
				if err := writeNew(out, data, 0o600, false, ""); err != nil {
					if errors.Is(err, fs.ErrExist) {
						return withHint(err, "choose another file")
					}
					return err
				}
			}
			switch {
			case a.jsonOut:
				a.emitJSON(importResult{WrappedKey: string(text), Out: out, Provider: name, Encoding: enc, Wraps: wrapInfos(wk)})
			case out != "":
				fmt.Fprintf(a.stderr, "wrote %s (%s version %s)\n", out, s.Ref(), s.KeyVersion)
			default:
				_, _ = a.stdout.Write(data)
			}
			return nil
		}),
	}
	f := c.Flags()
	f.StringVar(&provName, "provider", "", "awskms provider name in the configuration (default: the keyring primary)")
	f.StringArrayVar(&ctxPairs, "context", nil, "EncryptionContext pair key=value the blob was made with (repeatable); unwrap needs the same pairs")
	f.StringVar(&encoding, "encoding", importAuto, "input encoding: auto, raw or base64")
	f.StringVarP(&out, "out", "o", "", "write the wrapped key to FILE (atomic, mode 0600; an existing FILE is refused)")
	_ = c.RegisterFlagCompletionFunc("encoding", cobra.FixedCompletions([]string{importAuto, importRaw, importBase64}, cobra.ShellCompDirectiveNoFileComp))
	return c
}

// decodeBlob returns the CiphertextBlob in the input of keyctl import and
// the encoding it was read in. With encoding auto, input made only of
// base64 characters (standard or URL alphabet, padded or not, with line
// breaks) that decodes is base64; anything else is raw. A KMS blob is
// binary, so it is base64 by chance with a negligible probability.
func decodeBlob(in []byte, encoding string) ([]byte, string, error) {
	trimmed := bytes.TrimSpace(in)
	if bytes.HasPrefix(trimmed, []byte("keyctl-wk")) || core.IsBinaryWrappedKey(in) {
		return nil, "", withHint(usagef("the input is already a keyctl wrapped key, not a KMS CiphertextBlob"), "use `keyctl rewrap` to move it onto another provider")
	}
	if encoding == importRaw {
		if len(in) == 0 {
			return nil, "", fmt.Errorf("empty input: %w", core.ErrMalformed)
		}
		return bytes.Clone(in), importRaw, nil
	}
	if b, ok := decodeBase64(trimmed); ok {
		if core.IsBinaryWrappedKey(b) {
			return nil, "", withHint(usagef("the input is the base64 of a keyctl wrapped key, not of a KMS CiphertextBlob"), "use `keyctl rewrap` to move it onto another provider")
		}
		return b, importBase64, nil
	}
	if encoding == importBase64 {
		return nil, "", fmt.Errorf("input is not base64: %w", core.ErrMalformed)
	}
	if len(in) == 0 {
		return nil, "", fmt.Errorf("empty input: %w", core.ErrMalformed)
	}
	return bytes.Clone(in), importRaw, nil
}

func decodeBase64(s []byte) ([]byte, bool) {
	s = bytes.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return -1
		}
		return r
	}, s)
	if len(s) == 0 {
		return nil, false
	}
	for _, c := range s {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '-' || c == '_' || c == '=') {
			return nil, false
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(string(s)); err == nil && len(b) > 0 {
			return b, true
		}
	}
	return nil, false
}
