/* Types for mapview's tests: built with `clang -target bpf -g -O2 -c` at test time, and
 * only the .BTF section of the object is read. Globals make the types land in BTF. */
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

enum kind { KIND_NONE = 0, KIND_TCP = 6, KIND_UDP = 17 };
enum sign { SIGN_NEG = -1, SIGN_POS = 1 };

struct flow {
	__u32 saddr;
	__u16 port;
	__u8 proto;
	__u8 flags : 3, pad : 5;
	char name[8];
	enum kind k;
	union {
		__u32 a;
		__u16 b;
	};
	__u64 counts[2];
	struct {
		__u16 x;
		__u16 y;
	} hdr;
	int temp;
	_Bool ok;
	void *ptr;
	float f;
	double d;
	unsigned __int128 big;
	int sbits : 4;
	enum kind kbits : 5;
	const volatile __u8 raw[3];
	enum sign s;
	struct {
		__u32 inner_a;
		union {
			__u16 inner_b;
			__u8 inner_c[2];
		};
	};
};

typedef struct flow flow_t;

union u {
	__u32 word;
	__u8 bytes[4];
};

flow_t flow_global;
union u u_global;
__u32 counter = 7;
char label[4] = "abc";
