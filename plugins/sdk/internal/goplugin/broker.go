package goplugin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// ConnInfo is go-plugin's broker message: where the host serves service id.
type ConnInfo struct {
	ServiceID uint32
	Network   string
	Address   string
}

// connInfoDesc describes plugin.ConnInfo. It is built here and never
// registered globally, so a binary that also links go-plugin (a test) sees no
// duplicate registration.
var connInfoDesc = func() protoreflect.MessageDescriptor {
	s := proto.String
	i := proto.Int32
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	fd := &descriptorpb.FileDescriptorProto{
		Name:    s("medrelay/sdk/goplugin_broker.proto"),
		Package: s("plugin"),
		Syntax:  s("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: s("ConnInfo"),
			Field: []*descriptorpb.FieldDescriptorProto{
				{Name: s("service_id"), JsonName: s("serviceId"), Number: i(1), Label: opt, Type: descriptorpb.FieldDescriptorProto_TYPE_UINT32.Enum()},
				{Name: s("network"), JsonName: s("network"), Number: i(2), Label: opt, Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()},
				{Name: s("address"), JsonName: s("address"), Number: i(3), Label: opt, Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()},
				{Name: s("knock"), JsonName: s("knock"), Number: i(4), Label: opt, Type: descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum(), TypeName: s(".plugin.ConnInfo.Knock")},
			},
			NestedType: []*descriptorpb.DescriptorProto{{
				Name: s("Knock"),
				Field: []*descriptorpb.FieldDescriptorProto{
					{Name: s("knock"), JsonName: s("knock"), Number: i(1), Label: opt, Type: descriptorpb.FieldDescriptorProto_TYPE_BOOL.Enum()},
					{Name: s("ack"), JsonName: s("ack"), Number: i(2), Label: opt, Type: descriptorpb.FieldDescriptorProto_TYPE_BOOL.Enum()},
					{Name: s("error"), JsonName: s("error"), Number: i(3), Label: opt, Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()},
				},
			}},
		}},
	}
	f, err := protodesc.NewFile(fd, nil)
	if err != nil {
		panic("goplugin: ConnInfo descriptor: " + err.Error())
	}
	return f.Messages().ByName("ConnInfo")
}()

func connInfoToMsg(c ConnInfo) *dynamicpb.Message {
	m := dynamicpb.NewMessage(connInfoDesc)
	f := connInfoDesc.Fields()
	m.Set(f.ByNumber(1), protoreflect.ValueOfUint32(c.ServiceID))
	m.Set(f.ByNumber(2), protoreflect.ValueOfString(c.Network))
	m.Set(f.ByNumber(3), protoreflect.ValueOfString(c.Address))
	return m
}

func connInfoFromMsg(m *dynamicpb.Message) ConnInfo {
	f := connInfoDesc.Fields()
	return ConnInfo{
		ServiceID: uint32(m.Get(f.ByNumber(1)).Uint()),
		Network:   m.Get(f.ByNumber(2)).String(),
		Address:   m.Get(f.ByNumber(3)).String(),
	}
}

// MarshalConnInfo and UnmarshalConnInfo expose the wire form for tests.
func MarshalConnInfo(c ConnInfo) ([]byte, error) { return proto.Marshal(connInfoToMsg(c)) }

// UnmarshalConnInfo decodes a ConnInfo from its wire form.
func UnmarshalConnInfo(b []byte) (ConnInfo, error) {
	m := dynamicpb.NewMessage(connInfoDesc)
	if err := proto.Unmarshal(b, m); err != nil {
		return ConnInfo{}, err
	}
	return connInfoFromMsg(m), nil
}

// ErrBrokerClosed is returned by Dial after the plugin stopped.
var ErrBrokerClosed = errors.New("plugin broker closed")

// Broker is the plugin side of go-plugin's gRPC broker: the host announces,
// over a stream it opens to us, where it serves each service id; Dial waits
// for that announcement and connects.
type Broker struct {
	tls *tls.Config

	mu      sync.Mutex
	known   map[uint32]ConnInfo
	waiting map[uint32][]chan ConnInfo
	closed  bool
	done    chan struct{}
}

func newBroker(tlsCfg *tls.Config) *Broker {
	return &Broker{tls: tlsCfg, known: map[uint32]ConnInfo{}, waiting: map[uint32][]chan ConnInfo{}, done: make(chan struct{})}
}

func (b *Broker) announce(c ConnInfo) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.known[c.ServiceID] = c
	for _, ch := range b.waiting[c.ServiceID] {
		ch <- c
	}
	delete(b.waiting, c.ServiceID)
}

func (b *Broker) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.done)
	}
}

// Dial connects to the host service announced under id, waiting up to five
// seconds for the announcement (the host sends it when it starts serving).
func (b *Broker) Dial(ctx context.Context, id uint32, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, ErrBrokerClosed
	}
	info, ok := b.known[id]
	var ch chan ConnInfo
	if !ok {
		ch = make(chan ConnInfo, 1)
		b.waiting[id] = append(b.waiting[id], ch)
	}
	b.mu.Unlock()
	if !ok {
		t := time.NewTimer(5 * time.Second)
		defer t.Stop()
		select {
		case info = <-ch:
		case <-t.C:
			return nil, fmt.Errorf("plugin broker: the host did not announce service %d", id)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-b.done:
			return nil, ErrBrokerClosed
		}
	}
	creds := insecure.NewCredentials()
	if b.tls != nil {
		creds = credentials.NewTLS(b.tls)
	}
	network, address := info.Network, info.Address
	all := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, address)
		}),
	}, opts...)
	return grpc.NewClient("passthrough:///plugin-host", all...)
}

var brokerServiceDesc = grpc.ServiceDesc{
	ServiceName: "plugin.GRPCBroker",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "StartStream",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			b := srv.(*Broker)
			for {
				m := dynamicpb.NewMessage(connInfoDesc)
				if err := stream.RecvMsg(m); err != nil {
					return nil
				}
				info := connInfoFromMsg(m)
				// Knocks belong to the multiplexed broker, which we refuse.
				if info.Address == "" {
					continue
				}
				b.announce(info)
			}
		},
	}},
	Metadata: "plugin/grpc_broker.proto",
}
