//! The gRPC handlers: protobuf in, domain values through, protobuf out. The caller always comes from the
//! guard's [`Identity`](watchword::guard::Identity), never from the request.

use tonic::{Request, Response, Status};
use watchword::{
    guard::identity,
    pb::posts::v1::{self as pb, posts_service_server::PostsService},
};

use crate::{
    domain::{NewPost, PageRequest, Post, parse_id},
    error::PostsError,
    store::{DeleteError, Store},
};

pub struct PostsApi {
    pub(crate) store: Store,
}

#[tonic::async_trait]
impl PostsService for PostsApi {
    async fn create_post(
        &self,
        request: Request<pb::CreatePostRequest>,
    ) -> Result<Response<pb::CreatePostResponse>, Status> {
        let caller = identity(&request)?.clone();
        let pb::CreatePostRequest {
            title,
            body,
            request_id,
        } = request.into_inner();
        let content = NewPost::parse(title, body, request_id)?;
        let post = Post {
            id: uuid::Uuid::now_v7().to_string(),
            author_id: caller.user_id,
            author_username: caller.username,
            title: content.title,
            body: content.body,
            create_time: watchword_db::now(),
        };
        let post = self
            .store
            .insert(post, content.request_id)
            .await
            .map_err(PostsError::from)?;
        Ok(Response::new(pb::CreatePostResponse {
            post: Some(post_to_pb(post)),
        }))
    }

    async fn list_posts(
        &self,
        request: Request<pb::ListPostsRequest>,
    ) -> Result<Response<pb::ListPostsResponse>, Status> {
        identity(&request)?;
        let pb::ListPostsRequest {
            page_size,
            page_token,
            author_id,
        } = request.into_inner();
        let page = PageRequest::parse(page_size, &page_token, author_id)?;
        let page = self.store.list(page).await.map_err(PostsError::from)?;
        Ok(Response::new(pb::ListPostsResponse {
            posts: page.posts.into_iter().map(post_to_pb).collect(),
            next_page_token: page.next.map(|t| t.encode()).unwrap_or_default(),
        }))
    }

    async fn get_post(
        &self,
        request: Request<pb::GetPostRequest>,
    ) -> Result<Response<pb::GetPostResponse>, Status> {
        identity(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let post = self
            .store
            .get(&id)
            .await
            .map_err(PostsError::from)?
            .ok_or(PostsError::NotFound)?;
        Ok(Response::new(pb::GetPostResponse {
            post: Some(post_to_pb(post)),
        }))
    }

    async fn delete_post(
        &self,
        request: Request<pb::DeletePostRequest>,
    ) -> Result<Response<pb::DeletePostResponse>, Status> {
        let caller = identity(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let as_admin = caller.has_role("admin");
        self.store
            .delete(&id, &caller.user_id, as_admin)
            .await
            .map_err(|e| match e {
                DeleteError::NotFound => PostsError::NotFound,
                DeleteError::NotAuthor => PostsError::PermissionDenied,
                DeleteError::Db(e) => PostsError::Storage(e),
            })?;
        tracing::info!(post_id = %id, user_id = %caller.user_id, as_admin, "deleted post");
        Ok(Response::new(pb::DeletePostResponse {}))
    }
}

fn post_to_pb(post: Post) -> pb::Post {
    pb::Post {
        id: post.id,
        author_id: post.author_id,
        author_username: post.author_username,
        title: post.title,
        body: post.body,
        create_time: Some(post.create_time.into()),
    }
}
