#include "runtime/dist/liveness.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace tessera::dist {

int try_connect(const std::string& host, const std::string& port, int ms) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 || !res) return -1;
  const int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  bool made = false;
  if (fd >= 0) {
    const int rc = connect(fd, res->ai_addr, res->ai_addrlen);
    if (rc == 0) {
      made = true;
    } else if (errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      if (poll(&p, 1, ms) > 0) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
        made = err == 0;
      }
    }
    close(fd);
  }
  freeaddrinfo(res);
  return made ? 1 : 0;
}

Liveness::Liveness(const std::string& host) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  if (getaddrinfo(host.c_str(), "0", &hints, &res) != 0 || !res) return;
  fd_ = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ >= 0 && (bind(fd_, res->ai_addr, res->ai_addrlen) != 0 || listen(fd_, 64) != 0)) {
    close(fd_);
    fd_ = -1;
  }
  freeaddrinfo(res);
  if (fd_ < 0) return;
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len);
  const int port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                                  : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  address_ = host + " " + std::to_string(port);
  thread_ = std::thread([this] {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 100) > 0) {
        const int c = accept(fd_, nullptr, nullptr);
        if (c >= 0) close(c);
      }
    }
  });
}

Liveness::~Liveness() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) close(fd_);
}

bool Liveness::Alive(const std::string& address, int ms) {
  const auto sp = address.rfind(' ');
  if (sp == std::string::npos) return true;  // unknown: do not accuse it
  // Unresolvable: unknown too.
  return try_connect(address.substr(0, sp), address.substr(sp + 1), ms) != 0;
}

}  // namespace tessera::dist
