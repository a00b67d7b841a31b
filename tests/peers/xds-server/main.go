// xds-server: a small xDS v3 management server on envoyproxy's go-control-plane, for
// proxyd's fleet tests. It serves ADS and the per-type services (state of the world and
// delta) from a snapshot cache, and has a tiny HTTP control API on localhost:
//
//	POST /snapshot  {"nodes": ["id", ...], "types": {"<type_url>": {"version": "1",
//	                 "resources": ["<base64 of a serialized google.protobuf.Any>", ...]}}}
//	GET  /requests?since=N  every DiscoveryRequest / DeltaDiscoveryRequest seen, in order
//	GET  /streams           the streams open now, with their node ids
//
// It prints "ready grpc=PORT http=PORT" once both listen. Test code only: none of it goes
// into proxyd.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	runtimeservice "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	// the resource types a snapshot may carry, registered for anypb.UnmarshalNew
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
)

type record struct {
	Seq      int               `json:"seq"`
	Stream   int64             `json:"stream"`
	Delta    bool              `json:"delta"`
	Node     string            `json:"node"`
	TypeURL  string            `json:"type_url"`
	Version  string            `json:"version"`
	Nonce    string            `json:"nonce"`
	HasError bool              `json:"has_error"`
	Error    string            `json:"error"`
	Names    []string          `json:"names"`
	Initial  map[string]string `json:"initial_versions,omitempty"`
}

type streamInfo struct {
	Stream  int64  `json:"stream"`
	Node    string `json:"node"`
	TypeURL string `json:"type_url"`
	Delta   bool   `json:"delta"`
}

// SotW and delta streams are numbered apart by go-control-plane.
type streamKey struct {
	delta bool
	id    int64
}

type state struct {
	mu       sync.Mutex
	requests []record
	streams  map[streamKey]*streamInfo
}

func (s *state) open(id int64, typeURL string, delta bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams[streamKey{delta, id}] = &streamInfo{Stream: id, TypeURL: typeURL, Delta: delta}
	return nil
}

func (s *state) closed(id int64, delta bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.streams, streamKey{delta, id})
}

func (s *state) add(id int64, node *core.Node, r record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[streamKey{r.Delta, id}]
	if st == nil {
		st = &streamInfo{Stream: id, Delta: r.Delta}
		s.streams[streamKey{r.Delta, id}] = st
	}
	if node != nil && node.Id != "" {
		st.Node = node.Id
	}
	r.Seq = len(s.requests)
	r.Stream = id
	r.Node = st.Node
	s.requests = append(s.requests, r)
}

type snapshotBody struct {
	Nodes []string `json:"nodes"`
	Types map[string]struct {
		Version   string   `json:"version"`
		Resources []string `json:"resources"`
	} `json:"types"`
}

func buildSnapshot(body *snapshotBody) (*cache.Snapshot, error) {
	snap := &cache.Snapshot{}
	for typeURL, t := range body.Types {
		idx := cache.GetResponseType(typeURL)
		if idx == types.UnknownType {
			return nil, fmt.Errorf("unknown type %q", typeURL)
		}
		var items []types.ResourceWithTTL
		for _, b64 := range t.Resources {
			raw, err := base64.StdEncoding.DecodeString(b64)
			if err != nil {
				return nil, err
			}
			a := &anypb.Any{}
			if err := proto.Unmarshal(raw, a); err != nil {
				return nil, err
			}
			if a.TypeUrl != typeURL {
				return nil, fmt.Errorf("resource of type %q under %q", a.TypeUrl, typeURL)
			}
			m, err := a.UnmarshalNew()
			if err != nil {
				return nil, err
			}
			items = append(items, types.ResourceWithTTL{Resource: m.(types.Resource)})
		}
		snap.Resources[idx] = cache.NewResourcesWithTTL(t.Version, items)
	}
	return snap, nil
}

func main() {
	grpcAddr := flag.String("grpc", "127.0.0.1:0", "gRPC listen address")
	httpAddr := flag.String("http", "127.0.0.1:0", "control API listen address")
	flag.Parse()

	st := &state{streams: map[streamKey]*streamInfo{}}
	snapCache := cache.NewSnapshotCache(true, cache.IDHash{}, nil)
	cb := server.CallbackFuncs{
		StreamOpenFunc:        func(_ context.Context, id int64, t string) error { return st.open(id, t, false) },
		StreamClosedFunc:      func(id int64, _ *core.Node) { st.closed(id, false) },
		DeltaStreamOpenFunc:   func(_ context.Context, id int64, t string) error { return st.open(id, t, true) },
		DeltaStreamClosedFunc: func(id int64, _ *core.Node) { st.closed(id, true) },
		StreamRequestFunc: func(id int64, req *discovery.DiscoveryRequest) error {
			r := record{TypeURL: req.TypeUrl, Version: req.VersionInfo, Nonce: req.ResponseNonce,
				Names: req.ResourceNames}
			if req.ErrorDetail != nil {
				r.HasError, r.Error = true, req.ErrorDetail.Message
			}
			st.add(id, req.Node, r)
			return nil
		},
		StreamDeltaRequestFunc: func(id int64, req *discovery.DeltaDiscoveryRequest) error {
			r := record{Delta: true, TypeURL: req.TypeUrl, Nonce: req.ResponseNonce,
				Names: req.ResourceNamesSubscribe, Initial: req.InitialResourceVersions}
			if req.ErrorDetail != nil {
				r.HasError, r.Error = true, req.ErrorDetail.Message
			}
			st.add(id, req.Node, r)
			return nil
		},
	}
	srv := server.NewServer(context.Background(), snapCache, cb)
	g := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(g, srv)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, srv)
	routeservice.RegisterRouteDiscoveryServiceServer(g, srv)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, srv)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, srv)
	secretservice.RegisterSecretDiscoveryServiceServer(g, srv)
	runtimeservice.RegisterRuntimeDiscoveryServiceServer(g, srv)

	gl, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		log.Fatal(err)
	}
	hl, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		log.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/snapshot", func(w http.ResponseWriter, r *http.Request) {
		var body snapshotBody
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		snap, err := buildSnapshot(&body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		for _, node := range body.Nodes {
			if err := snapCache.SetSnapshot(context.Background(), node, snap); err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
		}
		w.Write([]byte("{}"))
	})
	mux.HandleFunc("/requests", func(w http.ResponseWriter, r *http.Request) {
		since, _ := strconv.Atoi(r.URL.Query().Get("since"))
		st.mu.Lock()
		out := []record{}
		if since < len(st.requests) {
			out = append(out, st.requests[since:]...)
		}
		st.mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"requests": out})
	})
	mux.HandleFunc("/streams", func(w http.ResponseWriter, r *http.Request) {
		st.mu.Lock()
		out := []streamInfo{}
		for _, s := range st.streams {
			out = append(out, *s)
		}
		st.mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"open": out})
	})
	go func() { log.Fatal(http.Serve(hl, mux)) }()
	fmt.Printf("ready grpc=%d http=%d\n", gl.Addr().(*net.TCPAddr).Port, hl.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	log.Fatal(g.Serve(gl))
}
