// Package proto holds the gRPC service definition of the keyctl provider
// plugin protocol (provider.proto) and the Go code generated from it. The
// generated files are committed; regenerate them with `go generate` after
// installing protoc (Debian: protobuf-compiler) and
//
//	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
package proto

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative provider.proto
