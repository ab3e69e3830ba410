package awskms_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/awskms"
)

// FuzzConfigValidate checks that Validate never panics, refuses only with
// ErrMalformed, and accepts only what the provider can write into a stanza
// and send safely.
func FuzzConfigValidate(f *testing.F) {
	for _, s := range [][4]string{
		{"alias/app", "eu-west-2", "", ""},
		{"arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", "", "prod", "https://kms.us-east-1.amazonaws.com"},
		{"1234abcd-12ab-34cd-56ef-1234567890ab", "", "", "http://127.0.0.1:4566"},
		{"arn:aws:kms:::alias/", "x", "a b", "http://[::1]:1"},
		{"", "", "", ""},
		{"alias/a\x00", "EU", "p\n", "http://10.0.0.1"},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, keyID, region, profile, endpoint string) {
		cfg := awskms.Config{KeyID: keyID, Region: region, Profile: profile, Endpoint: endpoint}
		err := cfg.Validate()
		if err != nil {
			if !errors.Is(err, core.ErrMalformed) {
				t.Fatalf("Validate error %v does not wrap ErrMalformed", err)
			}
			return
		}
		s := core.Stanza{Provider: awskms.Type, KeyID: keyID, KeyVersion: "v", Algorithm: core.AlgAWSKMS, Data: []byte{1}}
		if err := s.Validate(); err != nil {
			t.Fatalf("Validate accepted key id %q that a stanza cannot hold: %v", keyID, err)
		}
		if strings.ContainsAny(keyID+profile, " \t\r\n") {
			t.Fatalf("Validate accepted white space in %q / %q", keyID, profile)
		}
		if endpoint != "" && !strings.HasPrefix(endpoint, "https://") && !strings.HasPrefix(endpoint, "http://") {
			t.Fatalf("Validate accepted endpoint %q", endpoint)
		}
	})
}
